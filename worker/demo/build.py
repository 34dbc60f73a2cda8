"""Build the demo store: register the embedded model and run every worker stage that exists on it."""
from app.settings import Settings
from worker.store import LayerSpec, open_store, register_model

DEMO_MODEL = "demo"


def build_demo(settings: Settings) -> None:
    store = open_store(settings)
    with store.sessions.begin() as session:
        register_model(session, DEMO_MODEL, arch="RN50", weights=None, image_size=224,
                       layers=[LayerSpec("layer4", "visual.layer4", 2048, is_default=True)],
                       description="Placeholder until the embedded default model lands.")
