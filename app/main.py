"""The app factory. No module-level engine: everything hangs off `create_app(settings)`."""
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.gzip import GZipMiddleware

from app.headers import SecurityHeadersMiddleware, add_input_guards
from app.httpcache import CachedStaticFiles, ConditionalGetMiddleware, cache_file_headers
from app.lookup import NotFound
from app.pagecache import PageCacheMiddleware
from app.web import ROOT, JsonSuffixMiddleware, error_page
from store.cache import Cache
from store.keys import KeyError_
from store.schema import make_engine, make_sessionmaker
from store.settings import Settings


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    # no /docs or /redoc: their pages load scripts from a CDN and inline; /openapi.json stays
    app = FastAPI(title="CLIP Microscope", version="0.1.0", docs_url=None, redoc_url=None)
    app.state.settings = settings
    app.state.engine = make_engine(settings.db_url)
    app.state.sessions = make_sessionmaker(app.state.engine)
    app.state.cache = Cache(settings.cache_root)

    app.mount("/static", CachedStaticFiles(directory=str(ROOT / "static")), name="static")
    add_cache_route(app)
    add_error_handlers(app)
    for router in routers():
        app.include_router(router)
    app.add_middleware(JsonSuffixMiddleware)
    add_serving_middleware(app)
    return app


def add_serving_middleware(app: FastAPI) -> None:
    """Outermost first: security headers, the page cache, compression, then ETag / conditional GET."""
    add_input_guards(app)
    app.add_middleware(ConditionalGetMiddleware)
    app.add_middleware(GZipMiddleware, minimum_size=500, compresslevel=app.state.settings.gzip_level)
    app.add_middleware(PageCacheMiddleware, max_bytes=app.state.settings.page_cache_mb * 2**20)
    app.add_middleware(SecurityHeadersMiddleware)


def routers():
    from app.views import (
        attacks,
        browse,
        concepts,
        emotions,
        families,
        heatmaps,
        labels,
        login,
        probe,
        search,
        studies,
        units,
        words,
    )

    # attacks, emotions and concepts before browse: its /models/{model}/{layer}/… would catch their URLs
    return [attacks.router, emotions.router, concepts.router, browse.router, login.router, labels.router,
            families.router, studies.router, words.router, probe.router, search.router, heatmaps.router,
            units.router]


def add_cache_route(app: FastAPI) -> None:
    @app.get("/cache/{path:path}", include_in_schema=False)
    def cache_file(path: str, request: Request):
        file = request.app.state.cache.resolve(path)
        if file is None:
            return error_page(request, 404, f"No cached file {path!r}.")
        return FileResponse(file, headers=cache_file_headers(path))


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(NotFound)
    async def not_found(request: Request, exc: NotFound):
        links = [{"text": t, "url": u} for t, u in exc.links]
        return error_page(request, 404, exc.message, links=links)

    @app.exception_handler(KeyError_)
    async def bad_key(request: Request, exc: KeyError_):
        return error_page(request, 422, str(exc))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        reasons = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error_page(request, 422, "Invalid request: " + "; ".join(reasons), details=reasons)

    @app.exception_handler(DBAPIError)
    async def database_error(request: Request, exc: DBAPIError):
        if not exc.connection_invalidated:
            raise exc
        # the pool has dropped its connections (ping_when_idle covers idle ones; this was in recent use)
        response = error_page(request, 503, "The connection to the database was lost and has been reset: "
                                            "reload the page.")
        response.headers["Retry-After"] = "1"
        return response

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        message = exc.detail if isinstance(exc.detail, str) else "Error"
        if exc.status_code == 404 and message == "Not Found":
            message = f"No page at {request.url.path}. Start from the home page."
        return error_page(request, exc.status_code, message, links=[{"text": "home", "url": "/"}])
