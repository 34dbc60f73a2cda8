"""The typographic stage: attack text pasted on labelled images; success rate and pixel cover per attack.

Its images: the option `typographic.images` (the demo passes its photo set), else the corpus when it is
labelled (class folders, or a manifest with a label column). Attacks: `typographic.attacks`, else every
label attacks as itself."""
from worker.pipeline.contract import BuildContext, Item, Stage

TEMPLATE = "a photo of a {}"


def opt(ctx: BuildContext, key: str):
    defaults = {"images": ctx.corpus, "attacks": (), "extra_labels": (), "template": TEMPLATE, "label_key": "label"}
    return ctx.option("typographic", key) or defaults[key]


def images(ctx: BuildContext):
    return opt(ctx, "images")


def labels(ctx: BuildContext) -> list[str]:
    from worker.analyses.typographic import labelled_images

    return list(dict.fromkeys(label for _, label in labelled_images(images(ctx), opt(ctx, "label_key")) if label))


def attacks(ctx: BuildContext) -> list:
    """The attacks asked for (Attack objects or texts that attack as themselves), else every label."""
    from worker.analyses.typographic import Attack

    return [a if isinstance(a, Attack) else Attack(a, a) for a in opt(ctx, "attacks") or labels(ctx)]


class Typographic(Stage):
    name = "typographic"
    produces = "typographic attacks: success rate and pixel cover per attack text, example pictures"
    code = ("worker.analyses.typographic", "worker.compute.zeroshot", "worker.compute.render_text")
    reads_corpus = True

    def applies(self, ctx: BuildContext) -> str | None:
        from worker.compute.corpus import CorpusError

        if images(ctx) is None:
            return "no --corpus given"
        try:
            found = labels(ctx)
        except (CorpusError, ValueError, OSError) as e:
            return f"no labelled images: {e}"
        return None if len(found) >= 2 else f"the corpus has {len(found)} labelled classes, attacks need 2"

    def settings(self, ctx: BuildContext) -> dict:
        from worker.analyses.typographic import attack_settings
        from worker.pipeline.contract import corpus_digest

        return {**attack_settings(images(ctx), attacks(ctx), opt(ctx, "template"), ctx.loaded.image_size),
                "extra_labels": list(opt(ctx, "extra_labels")), "label_key": opt(ctx, "label_key"),
                "image_set": corpus_digest(images(ctx))}

    def compute(self, ctx: BuildContext, item: Item) -> tuple:
        from worker.analyses.typographic import attack_images, label_set, run_attacks

        data = attack_images(images(ctx), ctx.loaded.image_size, opt(ctx, "label_key"))
        found = label_set(data.labels, attacks(ctx), opt(ctx, "extra_labels"))
        return data, found, run_attacks(ctx.loaded, data, attacks(ctx), found, opt(ctx, "template"), 3)

    def write(self, ctx: BuildContext, merged: tuple, run_id: int) -> dict:
        from worker.analyses.typographic import attack_report

        data, found, result = merged
        return attack_report(ctx.store, images(ctx), data, found, opt(ctx, "template"), result)
