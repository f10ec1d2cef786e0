"""The `snapshop` command line: a thin adapter over `Engine` (DESIGN.md's command contract).

Exit codes: 0 on success, 1 on a user error (one line on stderr, no traceback), 2 on a
usage error.
"""

from __future__ import annotations

import json
import logging
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer

from snapshop.catalog.manifest import read_catalog
from snapshop.errors import SnapshopError
from snapshop.search.engine import Engine
from snapshop.search.results import Query, SearchResult
from snapshop.settings import Settings, load_settings

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False,
                  help="snapshop: visual product search. Photo in, products out.")

IndexOption = typer.Option(None, "--index", help="Index folder [default: $SNAPSHOP_INDEX or ./snapshop-index].")
BackendOption = typer.Option(None, "--backend", help="Index backend: faiss or milvus [default: setting backend, faiss].")
UriOption = typer.Option(None, "--uri", help="Milvus server of the milvus backend [default: setting milvus_uri].")


@contextmanager
def user_errors() -> Iterator[None]:
    """Turn a SnapshopError into one line on stderr and exit code 1."""
    try:
        yield
    except SnapshopError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(1) from None


def _settings(**overrides: object) -> Settings:
    with user_errors():
        return load_settings(overrides)


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Log progress details.")) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


def _lists(segment: dict) -> str:
    """The text ' (P of N lists)' where a partition's base is split into k-means lists (P: the
    lists a query probed, in an explanation); nothing otherwise."""
    if segment.get("base") != "k-means lists":
        return ""
    probed = f"{segment['lists_probed']:g} of " if "lists_probed" in segment else ""
    return f" ({probed}{segment['lists']} lists)"


@app.command()
def add(
    catalog: Path = typer.Argument(..., help="A .jsonl or .csv manifest, or a folder of images."),
    index: Optional[Path] = IndexOption,
    backend: Optional[str] = BackendOption,
    uri: Optional[str] = UriOption,
    model: Optional[str] = typer.Option(None, "--model", envvar="SNAPSHOP_MODEL",
                                        help="Model of a new index: a registered name or an .onnx path."),
    ray: Optional[str] = typer.Option(None, "--ray", metavar="ADDRESS",
                                      help="Embed on a Ray cluster: its address (auto, ray://host:10001) or "
                                           "local (start one here). Needs the cluster extra."),
) -> None:
    """Create the index if absent and upsert every item of CATALOG."""
    settings = _settings(index=index, backend=backend, milvus_uri=uri, model=model)
    with user_errors():
        parsed = read_catalog(catalog)
        engine = Engine.open_or_create(settings.index, settings, model=model)
        progress = sys.stderr.isatty() or len(parsed.rows) > 50
        embed = None
        if ray is not None:
            from snapshop.catalog.distributed import ray_embedder

            embed = ray_embedder(engine, parsed, ray, progress=progress)
        report = engine.add(parsed, progress=progress, embed=embed)
        stats = engine.stats()
    for error in sorted(report.errors, key=lambda e: e.line):
        who = f" ({error.item_id})" if error.item_id else ""
        typer.echo(f"skipped line {error.line}{who}: {error.reason}", err=True)
    typer.echo(
        f"added {report.items_added} items, updated {report.items_updated}, embedded {report.images} images, "
        f"skipped {len(report.errors)} rows; the index now holds {stats['items']} items ({stats['images']} images)"
    )


@app.command()
def remove(item_ids: list[str] = typer.Argument(..., help="Item ids to delete."), index: Optional[Path] = IndexOption,
           backend: Optional[str] = BackendOption, uri: Optional[str] = UriOption) -> None:
    """Delete items; they never appear in results again."""
    settings = _settings(index=index, backend=backend, milvus_uri=uri)
    with user_errors():
        report = Engine.open(settings.index, settings).remove(item_ids)
    for item_id in report.missing:
        typer.echo(f"not in the index: {item_id}", err=True)
    typer.echo(f"removed {len(report.removed)} items")


@app.command()
def search(
    images: list[Path] = typer.Argument(..., help="Query photos."),
    index: Optional[Path] = IndexOption,
    backend: Optional[str] = BackendOption,
    uri: Optional[str] = UriOption,
    k: Optional[int] = typer.Option(None, "-k", help="Results per query [default: setting k]."),
    category: Optional[str] = typer.Option(None, "--category", help="Search only this category."),
    box: Optional[str] = typer.Option(None, "--box", help="Search this box x0,y0,x1,y1 instead of the detected object."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per query, one per line."),
    explain: bool = typer.Option(False, "--explain", help="Report candidates and timings per partition and shard."),
    colour: Optional[str] = typer.Option(None, "--colour", help="Keep only products of this basic colour (red, navy, ...)."),
    curate: bool = typer.Option(True, "--curate/--no-curate",
                                help="Fold identical items, demote poor photos (settings); --no-curate: cosine order only."),
) -> None:
    """Find the catalog products in photos (many photos share one model load and batched inference)."""
    off = {"collapse_duplicates": False, "quality_weight": 0.0, "diversity": 0.0, "colour_weight": 0.0}
    settings = _settings(index=index, backend=backend, milvus_uri=uri, k=k, **({} if curate else off))
    with user_errors():
        query_box = _parse_box(box) if box else None
        engine = Engine.open(settings.index, settings)
        results = engine.search([Query(str(path), path, query_box) for path in images], k=settings.k, category=category,
                                colour=colour, explain=explain)
    for result in results:
        typer.echo(json.dumps(result.to_json(), ensure_ascii=False) if as_json else _human(result))
    if all(result.error for result in results):
        typer.echo(f"error: no photo could be read ({results[0].error})", err=True)
        raise typer.Exit(1)


@app.command()
def stats(index: Optional[Path] = IndexOption, backend: Optional[str] = BackendOption,
          uri: Optional[str] = UriOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Counts, partitions, model and fitted maps of an index."""
    settings = _settings(index=index, backend=backend, milvus_uri=uri)
    with user_errors():
        info = Engine.open(settings.index, settings).stats()
    if as_json:
        typer.echo(json.dumps(info, indent=2))
        return
    typer.echo(f"index      {info['index']}")
    typer.echo(f"items      {info['items']} ({info['images']} images, {info['pending_images']} pending)")
    typer.echo(f"model      {info['model']['name']} {info['model']['version']}, {info['pooling']} pooling")
    typer.echo(f"vectors    {info['dim']} float dims, {info['bits']}-bit codes, projection fitted on "
               f"{(info['projection'] or {}).get('source', '-')}")
    typer.echo(f"layout     {info['shards']} shard(s) x {info['replicas']} replica(s), change log at {info['change_log_seq']}")
    category = info["category_model"]
    if category["classes"]:
        kind = "fine-tuned network" if category["network"] else "linear classifier" if category["classifier"] else "kNN vote"
        typer.echo(f"category   {len(category['classes'])} classes: {kind}, fused with the kNN vote at alpha "
                   f"{category.get('alpha', 0):.2f}")
    localizer = info["localizer"]
    typer.echo(f"localize   {localizer['model']}" + (f", learned from {localizer.get('fitted_on', '?')} "
                                                    f"{localizer['learned_from']}" if localizer["learned_from"] else ""))
    for name, count in info["partitions"].items():
        typer.echo(f"partition  {name or '(no category)'}: {count} images")
    for segment in info["segments"]:
        typer.echo(f"segment    {segment['partition'] or '(no category)'} / shard {segment['shard']}: "
                   f"base {segment['base'] or '-'} {segment['base_images']}{_lists(segment)}, "
                   f"delta {segment['delta_images']}, tombstones {segment['tombstones']}")


@app.command()
def duplicates(index: Optional[Path] = IndexOption, backend: Optional[str] = BackendOption,
               uri: Optional[str] = UriOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Product groups: items found to be the same product (other sellers, re-uploads), with the evidence."""
    settings = _settings(index=index, backend=backend, milvus_uri=uri)
    with user_errors():
        engine = Engine.open(settings.index, settings)
        groups = engine.store.duplicate_groups()
        links = engine.store.duplicate_links()
    if as_json:
        evidence: dict[str, list] = {}
        member_of = {item: group for group, items in groups.items() for item in items}
        for a, b, found in links:
            evidence.setdefault(member_of.get(a, a), []).append({"items": [a, b], **found})
        typer.echo(json.dumps({"groups": [{"group": group, "items": items, "pairs": evidence.get(group, [])}
                                          for group, items in groups.items()]}, indent=2))
        return
    if not groups:
        typer.echo("no identical items found")
        return
    typer.echo(f"{'group':<24} {'items':>5}  members")
    for group, items in groups.items():
        typer.echo(f"{group:<24} {len(items):>5}  {', '.join(items)}")
    typer.echo(f"{len(groups)} groups, {sum(len(items) for items in groups.values())} items")


@app.command()
def compact(index: Optional[Path] = IndexOption, backend: Optional[str] = BackendOption,
            uri: Optional[str] = UriOption) -> None:
    """Fold every partition's delta and tombstones into new base segments now (also re-shards)."""
    settings = _settings(index=index, backend=backend, milvus_uri=uri)
    with user_errors():
        engine = Engine.open(settings.index, settings)
        try:
            report = engine.compact()
        finally:
            engine.close()
    images = sum(entry["images"] for entry in report)
    typer.echo(f"compacted {len(report)} partition shard(s) holding {images} images")


@app.command(name="eval")
def evaluate(
    dataset: Path = typer.Argument(..., help="Queries .jsonl: image, item_id, optional category and box."),
    index: Optional[Path] = IndexOption,
    backend: Optional[str] = BackendOption,
    uri: Optional[str] = UriOption,
    limit: Optional[int] = typer.Option(None, help="Use only the first N queries."),
    baseline: bool = typer.Option(True, help="Also run the whole-photo GAP + exact float baseline."),
    report: Optional[Path] = typer.Option(None, "--report",
                                          help="Write report.json, report.md and an HTML report (index.html with "
                                               "plots and example queries) to this folder."),
    versions: str = typer.Option("active", "--versions",
                                 help="Model versions to compare side by side: active, all, or VERSION,VERSION."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Retrieval and category metrics on a labelled query set, side by side with the baseline (and other model versions)."""
    from snapshop.search.evaluate import evaluate as run_evaluation, format_table, summary, write_report
    from snapshop.search.report import write_html_report

    settings = _settings(index=index, backend=backend, milvus_uri=uri)
    runs = []
    with user_errors():
        for position, engine in enumerate(Engine.open_versions(settings.index, settings, versions)):
            outcome = run_evaluation(engine, dataset, limit=limit, baseline=baseline and position == 0, progress=True,
                                     details=report is not None)
            model = outcome["index"]["model"]
            runs.append((f"{model['name']} {model['version']}", outcome))
            engine.close()
        if report:
            write_report(runs, report)
            page = write_html_report(report, runs)
    if as_json:
        typer.echo(json.dumps(summary(runs[0][1]) if len(runs) == 1 else {label: summary(o) for label, o in runs}, indent=2))
    else:
        typer.echo("\n\n".join(f"model {label}\n{format_table(outcome)}" for label, outcome in runs))
    if report:
        typer.echo(f"HTML report: {page}", err=as_json)


@app.command()
def serve(
    index: Optional[Path] = IndexOption,
    backend: Optional[str] = BackendOption,
    uri: Optional[str] = UriOption,
    host: Optional[str] = typer.Option(None, "--host", help="Address to listen on [default: setting host, 127.0.0.1]."),
    port: Optional[int] = typer.Option(None, "--port", help="TCP port [default: setting port, 8000]."),
) -> None:
    """Serve the HTTP API and the search page (API docs at /docs). Catalog writes need the admin_token setting."""
    _serve(_settings(index=index, backend=backend, milvus_uri=uri, host=host, port=port))


def _serve(settings: Settings) -> None:
    """Serve the index of `settings` until interrupted (the app opens and closes its engines)."""
    import uvicorn

    from snapshop.serve import create_app

    with user_errors():
        web = create_app(settings.index, settings)
    writes = "enabled (admin token set)" if settings.admin_token else "disabled (no admin_token set)"
    typer.echo(f"serving {settings.index} at http://{settings.host}:{settings.port}/ "
               f"(API docs at /docs, catalog writes {writes}); Ctrl-C stops")
    uvicorn.run(web, host=settings.host, port=settings.port, log_level="info")


@app.command()
def demo(
    folder: Path = typer.Option(Path("snapshop-demo"), "--dir", help="Where to build the demo catalog and index."),
    items: int = typer.Option(2000, help="Fashion-MNIST products in the demo catalog."),
    queries: int = typer.Option(5, help="Example searches to run."),
    serve_page: bool = typer.Option(True, "--serve/--no-serve",
                                    help="End by serving the search page on the demo index."),
    model: str = typer.Option("fashion-clicks", "--model", envvar="SNAPSHOP_MODEL",
                              help="Model of the demo index [default: fashion-clicks, trained on SIMULATED clicks]."),
) -> None:
    """Build a Fashion-MNIST demo catalog and index, run example searches on simulated shopper photos, then serve."""
    from snapshop.datasets import build_fashion_catalog, build_shopper_queries

    settings = _settings(index=folder / "index")
    with user_errors():
        typer.echo(f"building the demo catalog ({items} Fashion-MNIST products) in {folder}/catalog")
        manifest = build_fashion_catalog(folder / "catalog", n_items=items)
        shots = build_shopper_queries(folder / "catalog", folder / "queries", n_queries=queries)
        engine = Engine.open_or_create(settings.index, settings, model=model)
        report = engine.add(read_catalog(manifest), progress=True)
        typer.echo(f"indexed {report.items_added + report.items_updated} items into {settings.index}")
        rows = [json.loads(line) for line in shots.read_text().splitlines() if line.strip()]
        results = engine.search([Query(row["image"], shots.parent / row["image"]) for row in rows], k=5)
    typer.echo("\nexample searches on simulated shopper photos:")
    for row, result in zip(rows, results):
        found = [hit.item_id for hit in result.results]
        mark = "found" if row["item_id"] in found else "missed"
        typer.echo(f"\n{_human(result)}\n  true item {row['item_id']} ({row['category']}): {mark}")
    typer.echo(f"\ntry: snapshop search {shots.parent / rows[0]['image']} --index {settings.index}")
    if serve_page:
        engine.close()
        typer.echo(f"or upload one of the photos in {shots.parent / 'images'} to the search page:")
        _serve(settings)


@app.command(name="simulate-clicks")
def simulate_clicks(
    queries: Path = typer.Argument(..., help="Labelled shopper photos .jsonl (image, item_id), e.g. simulated ones."),
    out: Path = typer.Option(Path("clicks.jsonl"), "--out", help="Click log to write (JSON Lines, marked simulated)."),
    index: Optional[Path] = IndexOption,
    seed: int = typer.Option(0, help="Seed of the simulated shoppers."),
    noise: float = typer.Option(0.05, min=0.0, max=1.0, help="Share of clicks that go to a similar wrong item."),
    shown: int = typer.Option(20, min=1, max=200, help="Results on each simulated result page."),
    limit: Optional[int] = typer.Option(None, help="Use only the first N photos."),
) -> None:
    """Search each photo with the current model and write what simulated shoppers click (a simulation)."""
    from snapshop.learn.simulate import ShopperModel, simulate_clicks as run_simulation

    settings = _settings(index=index)
    with user_errors():
        engine = Engine.open(settings.index, settings)
        report = run_simulation(engine, queries, out, model=ShopperModel(shown=shown, noise=noise), seed=seed,
                                limit=limit, progress=True)
    summary = report.to_json()
    typer.echo(f"wrote {summary['impressions']} simulated impressions to {out}: {summary['with_click']} with a click, "
               f"{summary['wrong_click_share']:.1%} of clicks on a wrong item (simulated), {summary['errors']} unreadable")


@app.command()
def train(
    click_log: Path = typer.Argument(..., help="Click log (JSON Lines, DESIGN.md's format)."),
    index: Optional[Path] = IndexOption,
    epochs: int = typer.Option(12, min=1, help="Passes over the training clicks."),
    loss: str = typer.Option("npair", help="npair or triplet (hardest negative)."),
    refine: int = typer.Option(128, min=0, help="Hidden units of the head's cell refiner, which fine-tunes the top of the backbone (0: a linear head)."),
    all_clicks: bool = typer.Option(False, "--all-clicks", help="Learn from every click, even short visits (no noise filter)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Also write the trained model here [default: INDEX/trained-VERSION.onnx]."),
    switch: str = typer.Option("better", help="Activate the new version: better (if held-out recall improved), always, never."),
) -> None:
    """Learn box and embedding from clicks, embed the catalog again, then switch searches to the new version."""
    from snapshop.learn.loop import train_from_clicks
    from snapshop.learn.mining import TrustPolicy
    from snapshop.learn.train import TrainConfig

    if loss not in ("triplet", "npair") or switch not in ("better", "always", "never"):
        typer.echo("error: --loss is triplet or npair; --switch is better, always or never", err=True)
        raise typer.Exit(2)
    settings = _settings(index=index)
    with user_errors():
        summary = train_from_clicks(settings, click_log, config=TrainConfig(epochs=epochs, loss=loss, refine=refine),
                                    policy=TrustPolicy(use_all=all_clicks), output=output, switch=switch, progress=True)
    typer.echo(f"trained on {summary['triplets']} clicks ({summary['held_out_triplets']} held out) in {summary['seconds']:.0f} s"
               + (" (simulated log)" if summary["simulated_log"] else ""))
    typer.echo(f"held-out recall@1 of the clicked item: {_score(summary['baseline_recall@1'])} current model, "
               f"{_score(summary['recall@1'])} new model")
    state = "now active" if summary["active"] else "stored, not active (snapshop model use VERSION to switch)"
    typer.echo(f"model version {summary['version']}: {state}; model file {summary['model_file']}")


model_app = typer.Typer(help="List the index's model versions; switch between them.", no_args_is_help=True)
app.add_typer(model_app, name="model")


@model_app.command("list")
def model_list(index: Optional[Path] = IndexOption, as_json: bool = typer.Option(False, "--json")) -> None:
    """Every model version of the index; * marks the one searches use."""
    settings = _settings(index=index)
    with user_errors():
        versions = Engine.open(settings.index, settings).versions
    if as_json:
        typer.echo(json.dumps(versions, indent=2))
        return
    for entry in versions:
        training = entry["training"]
        trained = (f"trained on {training['triplets']} clicks, held-out recall@1 {_score(training['baseline_recall@1'])} -> "
                   f"{_score(training['recall@1'])}") if training else "pretrained"
        typer.echo(f"{'*' if entry['active'] else ' '} {entry['version']}  {entry['model']:<24} {trained}")


@model_app.command("use")
def model_use(version: str = typer.Argument(..., help="A version from `snapshop model list`."),
              index: Optional[Path] = IndexOption) -> None:
    """Switch searches to VERSION (roll back or forward), after bringing it up to date with the catalog."""
    from snapshop.learn.loop import use_version

    settings = _settings(index=index)
    with user_errors():
        changed = use_version(settings, version, progress=True)
    typer.echo(f"searches now use model version {version} ({changed['updated']} items embedded again, "
               f"{changed['removed']} removed to match the catalog)")


def _score(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def _parse_box(text: str) -> list[int]:
    try:
        values = [int(float(v)) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) != 4:
        raise SnapshopError(f"--box takes x0,y0,x1,y1, got {text!r}")
    return values


def _human(result: SearchResult) -> str:
    if result.error:
        return f"{result.query}: error: {result.error}"
    lines = [f"{result.query}"]
    if result.category:
        lines.append(f"  category {result.category.name} ({result.category.score:.2f})")
    if result.boxes:
        lines.append(f"  object   {result.boxes[0].as_list()}" + (f" (+{len(result.boxes) - 1} more)" if len(result.boxes) > 1 else ""))
    if result.match == "none":
        lines.append("  no close match in the catalog; the nearest products:")
    for rank, hit in enumerate(result.results, start=1):
        title = hit.fields.get("title", "")
        sellers = f"  ({len(hit.also) + 1} sellers)" if hit.also else ""
        lines.append(f"  {rank:2d}. {hit.item_id:<20} {hit.score:.3f}  {hit.category or ''}  {title}{sellers}")
    for part in result.explain or []:
        lines.append(f"  searched {part['partition'] or '(no category)'} / shard {part['shard']}: base {part['base'] or '-'} "
                     f"{part['base_images']}{_lists(part)}, delta {part['delta_images']}, tombstones {part['tombstones']}, "
                     f"{part['candidates']} candidates, {part['ms']} ms"
                     + (f", re-rank {part['rerank_ms']} ms" if "rerank_ms" in part else ""))
    return "\n".join(lines)


def run() -> None:
    """Console-script entry point."""
    app()
