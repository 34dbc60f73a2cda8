"""The maps stage: per layer, two items: the world map crops (activation grids) and the rendered place
names (checkpointed chunks); the write draws every unit's overlay and choropleth."""
from worker.pipeline.contract import BuildContext, Item, Stage, settings_hash


def plan(ctx: BuildContext):
    from worker.compute.text_scores import default_plan

    return ctx.option("maps", "plan") or default_plan(ctx.loaded)


def opt(ctx: BuildContext, key: str):
    return ctx.option("maps", key, {"crops": 256, "seed": 0, "cities": 300, "batch_size": 256}[key])


class Maps(Stage):
    name = "maps"
    produces = "world-map activation grids and heat overlays; country and city name scores with choropleths"
    distributed = True  # items on Ray workers (worker.pipeline.ray_executor)
    code = ("worker.analyses.maps", "worker.data.places", "worker.compute.text_scores",
            "worker.compute.render_text", "worker.analyses.resumable")

    def settings(self, ctx: BuildContext) -> dict:
        from worker.analyses.maps import GRID, MAP_WIDTH, PICTURE_WIDTH, TOP_PLACES

        return {"layers": ctx.layer_names(), "crops": opt(ctx, "crops"), "seed": opt(ctx, "seed"),
                "cities": opt(ctx, "cities"), "plan": plan(ctx).describe(), "map_width": MAP_WIDTH,
                "grid": list(GRID), "picture_width": PICTURE_WIDTH, "top_places": TOP_PLACES}

    def digest(self, ctx: BuildContext, layer: str) -> str:
        from worker.analyses.maps import map_settings

        return settings_hash(map_settings(ctx.loaded, layer, plan(ctx), opt(ctx, "crops"), opt(ctx, "seed"),
                                          opt(ctx, "cities")))

    def items(self, ctx: BuildContext) -> list[Item]:
        return [Item(f"{layer}:{part}", (layer, part, self.digest(ctx, layer)))
                for layer in ctx.layer_names() for part in ("grid", "places")]

    def compute(self, ctx: BuildContext, item: Item):
        from worker.analyses.maps import map_grids, place_texts, places_job, world_map
        from worker.analyses.resumable import score_resumable
        from worker.compute.text_scores import channels_last, layer_reader

        layer, part, digest = item.payload
        loaded, batch = ctx.loaded, opt(ctx, "batch_size")
        with channels_last(loaded):
            if part == "grid":
                return map_grids(loaded, layer, world_map(), opt(ctx, "crops"), opt(ctx, "seed"), batch, loaded.device)
            texts, info = place_texts(opt(ctx, "cities"))
            pre, post, _ = score_resumable(ctx.store, places_job(ctx.model_name, layer, digest),
                                           layer_reader(loaded, layer), texts, plan(ctx), loaded.mean, loaded.std,
                                           batch_size=batch, device=loaded.device, desc="place names")
            return texts, info, pre, post

    def merge(self, ctx: BuildContext, parts: list) -> dict:
        items = self.items(ctx)
        return {layer: {item.payload[1]: part for item, part in zip(items, parts, strict=True)
                        if item.payload[0] == layer} for layer in ctx.layer_names()}

    def write(self, ctx: BuildContext, merged: dict, run_id: int) -> dict:
        from worker.analyses.maps import world_map, write_maps

        layers = {layer: write_maps(ctx.store, ctx.model_name, layer, world_map(), got["grid"], got["places"],
                                    self.digest(ctx, layer), run_id) for layer, got in merged.items()}
        return {"layers": layers, "units": sum(r["units"] for r in layers.values())}
