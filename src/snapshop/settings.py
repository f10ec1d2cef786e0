"""One table of settings. Precedence: defaults < config file < SNAPSHOP_* environment < flags.

The config file is TOML: `$SNAPSHOP_CONFIG`, else `./snapshop.toml` when present.
Every setting here is documented in docs/settings.md (a test checks it).
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping

from snapshop.errors import SettingsError


@dataclass(frozen=True)
class Setting:
    """A named setting: its type, default value and one line of help."""

    name: str
    default: Any
    help: str
    kind: Callable[[Any], Any]
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] | None = None
    multiple_of: int | None = None
    secret: bool = False

    def check(self, value: Any, source: str) -> Any:
        """The value converted to the setting's type; out-of-range values are a SettingsError."""
        try:
            value = self.kind(value)
        except (TypeError, ValueError):
            kind = self.kind.__name__.strip("_")
            raise SettingsError(f"{source}: {self.name} must be {kind}, got {value!r}") from None
        if self.choices is not None and value not in self.choices:
            raise SettingsError(f"{source}: {self.name} must be one of {', '.join(self.choices)}, got {value!r}")
        if self.minimum is not None and value < self.minimum:
            raise SettingsError(f"{source}: {self.name} must be at least {self.minimum}, got {value!r}")
        if self.multiple_of is not None and value % self.multiple_of:
            raise SettingsError(f"{source}: {self.name} must be a multiple of {self.multiple_of}, got {value!r}")
        if self.maximum is not None and value > self.maximum:
            raise SettingsError(f"{source}: {self.name} must be at most {self.maximum}, got {value!r}")
        return value

    @property
    def env_var(self) -> str:
        return "SNAPSHOP_" + self.name.upper()


def _boolean(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(value)


SETTINGS: tuple[Setting, ...] = (
    Setting("index", "snapshop-index", "Index folder used when --index is not given.", str),
    Setting("model", "efficientnet-lite0", "Embedder of a new index: a registered name or an .onnx path.", str),
    Setting("dim", 256, "Dimensions of the projected float embedding.", int, minimum=8),
    Setting("bits", 256, "Bits of the binary code (a multiple of 8, at most dim).", int, minimum=8,
            multiple_of=8),
    Setting("pooling", "gem", "Pooling of the backbone feature map: gap, gem or rmac.", str,
            choices=("gap", "gem", "rmac")),
    Setting("whitening", "learned", "Projection fitted on a large catalog: learned (from synthetic views) or pca.", str,
            choices=("learned", "pca")),
    Setting("shortlist", 800, "Shortlist size R: best codes per shard re-ranked by float cosine.", int, minimum=1),
    Setting("nprobe", 16, "Inverted lists a Milvus search visits.", int, minimum=1),
    Setting("lists_probed", 500, "k-means lists the faiss backend scans per shard, nearest first (its nprobe).", int,
            minimum=1),
    Setting("centroid_weight", 0.12, "Weight of a probed k-means list's centroid score (above the probed ones' mean) "
            "added to its codes' scores in the faiss backend's shortlist; 0: codes alone.", float, minimum=0),
    Setting("list_size", 512, "Images per k-means list of a large base segment (faiss backend).", int, minimum=32),
    Setting("lists_from", 65_536, "Images from which a base segment is split into k-means lists; smaller ones are "
            "scanned whole.", int, minimum=1),
    Setting("shards", 1, "Shards the index is split into by a hash of item_id (a change re-shards on compaction).",
            int, minimum=1, maximum=64),
    Setting("replicas", 1, "Copies of each shard; queries go to them in turn, and to another when one fails.", int,
            minimum=1, maximum=8),
    Setting("backend", "faiss", "Index backend: faiss (embedded, in the index folder) or milvus (a Milvus server).", str,
            choices=("faiss", "milvus")),
    Setting("milvus_uri", "http://127.0.0.1:19530", "Milvus server the milvus backend uses.", str),
    Setting("milvus_token", "", "Milvus credentials (user:password or an API key); empty: none.", str, secret=True),
    Setting("milvus_consistency", "Bounded", "Consistency of Milvus searches: Strong, Bounded, Session or Eventually.",
            str, choices=("Strong", "Bounded", "Session", "Eventually")),
    Setting("milvus_timeout", 20, "Seconds a Milvus search or write may take, retries on an unreachable server included.",
            int, minimum=1, maximum=3600),
    Setting("milvus_nlist", 1024, "Inverted lists of the Milvus BIN_IVF_FLAT index (fixed when the collection is made).",
            int, minimum=1, maximum=65536),
    Setting("compact_delta", 10_000, "Delta images in a partition that start a background compaction.", int,
            minimum=1),
    Setting("compact_tombstones", 10_000, "Removed images in a partition's base that start a compaction.", int,
            minimum=1),
    Setting("k", 10, "Results returned per query when -k is not given.", int, minimum=1),
    Setting("batch_size", 32, "Images per CNN batch.", int, minimum=1),
    Setting("detect_size", 448,
            "Input side in pixels for the localization pass of a photo (synthetic views: their own 448).", int,
            minimum=32),
    Setting("localize", True, "Crop the main object before embedding (false: embed the whole photo).", _boolean),
    Setting("box_threshold", 0.5, "Lowest box score returned by localization (0-1).", float, minimum=0, maximum=1),
    Setting("category_knn", 10, "Nearest catalog images voting for the query's category.", int, minimum=1),
    Setting("category_network_from", 1000, "Labelled catalog images from which the category classifier is a network "
            "fine-tuned on the catalog (below: a linear classifier).", int, minimum=1),
    Setting("category_epochs", 8, "Epochs a category network is fine-tuned for (0: never fine-tune one).", int,
            minimum=0),
    Setting("runner_up_below", 0.6, "Also search the runner-up category when the top score is below this.", float,
            minimum=0, maximum=1),
    Setting("collapse_duplicates", True, "Fold identical items (one product group) into one result card.", _boolean),
    Setting("quality_weight", 0.1, "Score taken off a result per unit of missing image quality (0: off).", float,
            minimum=0, maximum=1),
    Setting("diversity", 0.0, "Score taken off a result per unit of cosine to a better result above it (0: off).",
            float, minimum=0, maximum=1),
    Setting("colour_weight", 0.0, "Score added per unit of colour shared with the query's product (0: off).", float,
            minimum=0, maximum=1),
    Setting("no_match", True, "Mark results under the calibrated score threshold; say when none is close.", _boolean),
    Setting("no_match_keep", 0.95, "Share of true matches (synthetic views) the no-match threshold keeps close.",
            float, minimum=0.5, maximum=1),
    Setting("duplicate_accept", 0.97, "Cosine from which two items are identical without further checks.", float,
            minimum=0, maximum=1),
    Setting("duplicate_candidate", 0.4, "Cosine from which two items are checked geometrically for being identical.",
            float, minimum=0, maximum=1),
    Setting("duplicate_inliers", 10, "Keypoint matches under one transform needed for two photos to be identical.",
            int, minimum=3),
    Setting("duplicate_correlation", 0.95, "Correlation of two aligned photos needed for them to be identical.", float,
            minimum=0, maximum=1),
    Setting("duplicate_colour_distance", 14.0, "Largest colour difference (CIELAB ΔE, earth mover's distance of the "
            "dominant colours) between two identical items.", float, minimum=0, maximum=200),
    Setting("min_fit_images", 1000, "Images needed to fit projection and ITQ on the catalog itself.", int, minimum=1),
    Setting("max_pixels", 40_000_000, "Largest image accepted, in pixels (decompression-bomb guard).", int, minimum=1),
    Setting("max_image_bytes", 50 * 1024 * 1024, "Largest image file accepted, in bytes.", int, minimum=1),
    Setting("threads", 0, "ONNX Runtime intra-op threads; 0: every core (the server: its share per search worker).",
            int, minimum=0),
    Setting("host", "127.0.0.1", "Address `snapshop serve` listens on (0.0.0.0: every interface).", str),
    Setting("port", 8000, "TCP port `snapshop serve` listens on.", int, minimum=1, maximum=65535),
    Setting("admin_token", "", "Bearer token that catalog writes over HTTP need; empty: writes disabled.", str,
            secret=True),
    Setting("batch_wait_ms", 5.0,
            "How long a search waits for company while another batch runs (an idle server starts it at once).",
            float, minimum=0, maximum=1000),
    Setting("max_batch", 4, "Most searches the server runs at once, shared out among its search workers' batches.",
            int, minimum=1, maximum=256),
    Setting("search_workers", 2, "Batches the server searches at once, each on its own engine and CNN session.", int,
            minimum=1, maximum=16),
    Setting("max_upload_bytes", 20 * 1024 * 1024, "Largest HTTP request body accepted (photo and form), in bytes.",
            int, minimum=1),
    Setting("click_log", "", "Click log the web page appends to; empty: clicks.jsonl in the index folder.", str),
)
BY_NAME = {setting.name: setting for setting in SETTINGS}


@dataclass(frozen=True)
class Settings:
    """Resolved values of every setting; attribute access by setting name."""

    values: Mapping[str, Any]

    def __getattr__(self, name: str) -> Any:
        try:
            return self.values[name]
        except KeyError:
            raise AttributeError(name) from None

    def __repr__(self) -> str:
        shown = {name: "***" if name in BY_NAME and BY_NAME[name].secret and value else value
                 for name, value in self.values.items()}
        return f"Settings({shown!r})"

    def replace(self, **overrides: Any) -> "Settings":
        """A copy with some values overridden (flags); None means "not given"."""
        merged = dict(self.values)
        merged.update({name: BY_NAME[name].check(value, "flag") for name, value in overrides.items() if value is not None})
        return Settings(merged)


def load_settings(
    overrides: Mapping[str, Any] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    config_file: Path | None = None,
) -> Settings:
    """Resolve every setting from defaults, config file, environment and explicit overrides."""
    environ = os.environ if environ is None else environ
    values = {setting.name: setting.default for setting in SETTINGS}
    values.update(_read_config(config_file or _default_config_path(environ)))
    for setting in SETTINGS:
        if setting.env_var in environ:
            values[setting.name] = setting.check(environ[setting.env_var], setting.env_var)
    return Settings(values).replace(**(overrides or {}))


def _default_config_path(environ: Mapping[str, str]) -> Path | None:
    if "SNAPSHOP_CONFIG" in environ:
        return Path(environ["SNAPSHOP_CONFIG"])
    local = Path("snapshop.toml")
    return local if local.is_file() else None


def _read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise SettingsError(f"{path}: cannot read the config file ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SettingsError(f"{path}: not valid TOML ({exc})") from None
    unknown = sorted(set(data) - set(BY_NAME))
    if unknown:
        raise SettingsError(f"{path}: unknown setting(s) {', '.join(unknown)}")
    return {name: BY_NAME[name].check(value, str(path)) for name, value in data.items()}

