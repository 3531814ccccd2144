"""The scenes of a batch (`bas batch`, `run_batch`): a folder of scene folders or a JSON-lines manifest, read into
`SceneJob`s before anything runs, with every problem named by its file (and line)."""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from .config import TrainConfig
from .errors import InputError

SCENE_JSON = "scene.json"
#: keys a scene.json / manifest line may hold besides where the scene is
SCENE_KEYS = ("name", "names", "initializers", "settings")
MANIFEST_SOURCE_KEYS = ("scene", "image", "masks")

@dataclass
class SceneJob:
    """One scene of a batch: where it is, its output name, its names/initializers and setting overrides."""

    name: str                                   # output is OUT/<name>.safetensors
    scene_dir: str | None = None                # a folder as `bas extract` takes it ...
    image: str | None = None                    # ... or an image file and one mask file per concept
    masks: list[str] | None = None
    names: list[str] | None = None
    initializers: list[str | None] | None = None
    settings: dict[str, Any] = field(default_factory=dict)   # TrainConfig fields overriding the batch's
    problem: str | None = None                  # why this scene cannot run (found while listing it)

    @property
    def source(self) -> str:
        return self.scene_dir or self.image or ""

    def load(self):
        """The validated Scene (InputError names the file and what is wrong)."""
        from .scene import load_scene, load_scene_dir

        if self.problem:
            raise InputError(self.problem)
        if self.scene_dir is not None:
            return load_scene_dir(self.scene_dir, self.names, self.initializers)
        return load_scene(self.image, self.masks or [], self.names, self.initializers)

    def config(self, base: TrainConfig) -> TrainConfig:
        """The batch's settings with this scene's overrides (InputError for an unknown or mistyped one)."""
        known = {f.name for f in dataclasses.fields(TrainConfig)}
        unknown = sorted(set(self.settings) - known)
        if unknown:
            raise InputError(f"settings of scene {self.name!r}: unknown setting(s) {unknown}; "
                             f"known: {', '.join(sorted(known))}")
        return dataclasses.replace(base, **self.settings)


def _string_list(value: Any, key: str, where: str) -> list | None:
    if value is None:
        return None
    if isinstance(value, str):
        return [v.strip() for v in value.split(",")]
    if not isinstance(value, list) or not all(v is None or isinstance(v, str) for v in value):
        raise InputError(f"{where}: {key!r} must be a list of strings or a comma-separated string")
    return value


def _apply_scene_keys(job: SceneJob, entry: dict, where: str) -> None:
    """Copy names / initializers / settings of a scene.json or manifest line into the job."""
    names = _string_list(entry.get("names"), "names", where)
    initializers = _string_list(entry.get("initializers"), "initializers", where)
    if names is not None:
        job.names = names
    if initializers is not None:
        job.initializers = initializers
    settings = entry.get("settings", {})
    if not isinstance(settings, dict):
        raise InputError(f"{where}: 'settings' must be an object of TrainConfig fields, got {type(settings).__name__}")
    job.settings = dict(settings)


def _check_output_name(name: str, where: str) -> str:
    if not isinstance(name, str) or not name.strip() or name.startswith(".") or any(c in name for c in "/\\\0"):
        raise InputError(f"{where}: scene name {name!r} cannot be a file name (no '/', '\\', leading '.')")
    return name


def discover_scenes(source: str | os.PathLike, names: Sequence[str] | None = None,
                    initializers: Sequence[str | None] | None = None,
                    exclude: Iterable[str | os.PathLike] = ()) -> list[SceneJob]:
    """The scenes of a batch: every sub-folder of a folder, or every line of a JSON-lines manifest.

    A folder of scenes: each sub-folder (hidden ones and `exclude` left out) is one scene as `bas extract`
    takes it, named after the folder, optionally with a `scene.json` holding `names`, `initializers` and
    `settings` (TrainConfig fields). A manifest (a file): one JSON object per line with `scene` (a folder)
    or `image` + `masks` (files), and optionally `name`, `names`, `initializers`, `settings`; relative paths
    are relative to the manifest; blank lines and lines starting with '#' are skipped.

    `names` / `initializers` apply to every scene that does not give its own. A broken scene.json makes
    only that scene fail (its job carries the problem); a manifest line that is not a scene description,
    or two scenes with the same name, is an InputError for the whole batch, before anything runs.
    """
    source = os.fspath(source)
    defaults = dict(names=list(names) if names else None,
                    initializers=list(initializers) if initializers else None)
    if os.path.isdir(source):
        jobs = _scenes_in_folder(source, defaults, {os.path.realpath(os.fspath(p)) for p in exclude})
    elif os.path.isfile(source):
        jobs = _scenes_in_manifest(source, defaults)
    else:
        raise InputError(f"scenes {source!r} does not exist (give a folder of scene folders or a .jsonl manifest)")
    if not jobs:
        raise InputError(f"scenes {source!r} holds no scenes")
    seen: dict[str, str] = {}
    for job in jobs:
        if job.name in seen:
            raise InputError(f"scenes: two scenes are named {job.name!r} ({seen[job.name]} and {job.source}); "
                             "each needs its own name, since the pack is OUT/<name>.safetensors")
        seen[job.name] = job.source
    return jobs


def _scenes_in_folder(folder: str, defaults: dict, exclude: set[str]) -> list[SceneJob]:
    from .scene import IMAGE_EXTENSIONS

    if any(entry.lower().startswith("img.") and entry.lower().endswith(IMAGE_EXTENSIONS)
           for entry in os.listdir(folder)):
        raise InputError(f"scenes {folder!r} is one scene folder (it holds img.*); `bas batch` takes a folder "
                         "of scene folders or a manifest — use `bas extract` for one scene")
    jobs = []
    for entry in sorted(os.listdir(folder)):
        path = os.path.join(folder, entry)
        if entry.startswith(".") or not os.path.isdir(path) or os.path.realpath(path) in exclude:
            continue
        job = SceneJob(name=entry, scene_dir=path, **defaults)
        meta_path = os.path.join(path, SCENE_JSON)
        if os.path.isfile(meta_path):
            try:
                with open(meta_path, encoding="utf-8") as f:
                    entry_meta = json.load(f)
                if not isinstance(entry_meta, dict):
                    raise InputError(f"{meta_path}: expected a JSON object")
                unknown = sorted(set(entry_meta) - set(SCENE_KEYS))
                if unknown:
                    raise InputError(f"{meta_path}: unknown key(s) {unknown}; a scene.json may hold "
                                     f"{', '.join(SCENE_KEYS)}")
                _apply_scene_keys(job, entry_meta, meta_path)
                if "name" in entry_meta:
                    job.name = _check_output_name(entry_meta["name"], meta_path)
            except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
                job.problem = f"{meta_path} is not readable JSON ({exc})"
            except InputError as exc:
                job.problem = str(exc)
        jobs.append(job)
    return jobs


def _scenes_in_manifest(manifest: str, defaults: dict) -> list[SceneJob]:
    base = os.path.dirname(os.path.abspath(manifest))

    def resolve(path: Any, where: str) -> str:
        if not isinstance(path, str) or not path:
            raise InputError(f"{where}: expected a path, got {path!r}")
        return path if os.path.isabs(path) else os.path.join(base, path)

    jobs = []
    try:
        with open(manifest, encoding="utf-8") as f:
            lines = f.readlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"manifest {manifest!r} is not a readable text file ({exc})") from exc
    for number, line in enumerate(lines, 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{manifest} line {number}"
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{where}: not a JSON object ({exc})") from exc
        if not isinstance(entry, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(entry).__name__}")
        unknown = sorted(set(entry) - set(SCENE_KEYS) - set(MANIFEST_SOURCE_KEYS))
        if unknown:
            raise InputError(f"{where}: unknown key(s) {unknown}; a line holds 'scene' (a folder) or "
                             f"'image' + 'masks', and optionally {', '.join(SCENE_KEYS)}")
        if ("scene" in entry) == ("image" in entry) or ("image" in entry) != ("masks" in entry):
            raise InputError(f"{where}: give either 'scene' (a scene folder) or 'image' and 'masks'")
        if "scene" in entry:
            scene_dir = resolve(entry["scene"], where)
            job = SceneJob(name=os.path.basename(os.path.normpath(scene_dir)), scene_dir=scene_dir, **defaults)
        else:
            masks = entry["masks"]
            if not isinstance(masks, list) or not masks:
                raise InputError(f"{where}: 'masks' must be a non-empty list of mask files, one per concept")
            image = resolve(entry["image"], where)
            job = SceneJob(name=os.path.splitext(os.path.basename(image))[0], image=image,
                           masks=[resolve(m, where) for m in masks], **defaults)
        if "name" in entry:
            job.name = entry["name"]
        _check_output_name(job.name, where)
        try:
            _apply_scene_keys(job, entry, where)
        except InputError as exc:
            job.problem = str(exc)
        jobs.append(job)
    return jobs
