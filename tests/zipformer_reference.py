"""Test-only access to the reference package ``zipformer==0.1.3``.

``zipformer`` on PyPI is the Next-gen Kaldi team's standalone copy of icefall's
Zipformer2 encoder, its transducer model, ScaledAdam and Eden. The tests use it
as an independent reference; it is never a runtime dependency of this project
(it pins ``torch<2.8``, and importing it pulls in ``torchaudio`` and
``webdataset``, which do not install here). ``scripts/setup.sh`` installs it,
with its data package ``atdataset==0.2.6``, by
``pip install --no-deps zipformer==0.1.3 atdataset==0.2.6``.

The parts the tests need (encoder, front end, scaling modules, optimizer,
decoder/joiner/``AsrModel``) use neither torchaudio nor webdataset at run time;
only module-level imports name them. So :func:`load_reference`

* puts placeholder modules for ``torchaudio`` and ``webdataset`` into
  ``sys.modules`` while it imports (only when the real package is absent), and
  removes them again afterwards, so that other libraries' "is torchaudio
  available?" checks are not fooled;
* skips the package's ``zipformer/__init__.py`` (it imports the whole
  inference CLI) by registering a bare package object for ``zipformer`` whose
  ``__path__`` is the installed folder, then imports only the submodules.

Usage in a test module::

    from zipformer_reference import load_reference
    ref = load_reference()          # skips the module when not installed
    opt = ref.optim.ScaledAdam(model.named_parameters(), lr=0.045)

Calling a placeholder (for example building an ``atdataset.Fbank``) raises a
``RuntimeError`` that says so.
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
import importlib.util
import sys
import types
from typing import Any, Dict, Mapping

import pytest

REFERENCE_VERSION = "0.1.3"
ATDATASET_VERSION = "0.2.6"
INSTALL_HINT = (
    f"pip install --no-deps zipformer=={REFERENCE_VERSION} atdataset=={ATDATASET_VERSION} "
    "(scripts/setup.sh does this)"
)

# Packages imported at module level by atdataset but not used by the parts we load.
_PLACEHOLDER_PACKAGES = {
    "torchaudio": ("torchaudio.transforms", "torchaudio.functional", "torchaudio.compliance"),
    "webdataset": ("webdataset.utils",),
}


class _PlaceholderMeta(type):
    """Metaclass: any attribute of a placeholder class is another placeholder class."""

    def __getattr__(cls, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder_class(f"{cls.__qualname__}.{name}")


def _placeholder_class(name: str) -> type:
    def _refuse(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError(
            f"{name} is a test placeholder (the real package is not installed); "
            "the zipformer reference is loaded only for its model and optimizer code"
        )

    # Subclassable (atdataset does `class ATDataloader(wds.WebLoader)`), not instantiable.
    return _PlaceholderMeta(name, (), {"__init__": _refuse, "__call__": _refuse})


class _PlaceholderModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return _placeholder_class(f"{self.__name__}.{name}")


def _installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def _require_installed() -> str:
    """Skip the calling test module when the reference is missing; its folder otherwise."""
    spec = importlib.util.find_spec("zipformer")
    if spec is None or _installed_version("zipformer") is None:
        pytest.skip(
            f"reference package zipformer=={REFERENCE_VERSION} is not installed: {INSTALL_HINT}",
            allow_module_level=True,
        )
    if importlib.util.find_spec("atdataset") is None:
        pytest.skip(
            f"atdataset=={ATDATASET_VERSION} (imported by the zipformer reference) is not "
            f"installed: {INSTALL_HINT}",
            allow_module_level=True,
        )
    version = _installed_version("zipformer")
    if version != REFERENCE_VERSION:
        # Installed but a different release: a wrong reference is an error, not a skip.
        raise RuntimeError(
            f"the tests compare with zipformer=={REFERENCE_VERSION} but {version} is "
            f"installed; {INSTALL_HINT}"
        )
    assert spec.submodule_search_locations, "zipformer is not a package"
    return list(spec.submodule_search_locations)[0]


def _add_placeholders() -> list:
    added = []
    for top, subs in _PLACEHOLDER_PACKAGES.items():
        if top in sys.modules or importlib.util.find_spec(top) is not None:
            continue  # the real package is there: use it
        for name in (top, *subs):
            mod = _PlaceholderModule(name)
            mod.__path__ = []  # a package, so `import top.sub` resolves through sys.modules
            sys.modules[name] = mod
            added.append(name)
        for sub in subs:
            setattr(sys.modules[top], sub.rsplit(".", 1)[1], sys.modules[sub])
    return added


@functools.cache
def load_reference() -> types.SimpleNamespace:
    """The reference's modules: ``zipformer``, ``scaling``, ``optim``, ``subsampling``,
    ``model`` (from ``zipformer.modules``) and ``utils`` (``zipformer.utils``).

    Skips the calling test module (``pytest.skip(allow_module_level=True)``)
    only when the package is not installed.
    """
    folder = _require_installed()
    added = _add_placeholders()
    try:
        if not isinstance(sys.modules.get("zipformer"), types.ModuleType) or not getattr(
            sys.modules["zipformer"], "__path__", None
        ):
            pkg = types.ModuleType("zipformer", "zipformer reference (package __init__ skipped)")
            pkg.__path__ = [folder]
            pkg.__package__ = "zipformer"
            sys.modules["zipformer"] = pkg
        names = ("zipformer", "scaling", "optim", "subsampling", "model")
        mods = {n: importlib.import_module(f"zipformer.modules.{n}") for n in names}
        mods["utils"] = importlib.import_module("zipformer.utils")
    finally:
        for name in added:
            sys.modules.pop(name, None)
    return types.SimpleNamespace(**mods, version=REFERENCE_VERSION)


# icefall's defaults (egs/librispeech/ASR/zipformer/train.py, same in the reference's train.py).
ICEFALL_DEFAULTS: Dict[str, Any] = {
    "feature_dim": 80,
    "num_encoder_layers": "2,2,3,4,3,2",
    "downsampling_factor": "1,2,4,8,4,2",
    "feedforward_dim": "512,768,1024,1536,1024,768",
    "num_heads": "4,4,4,8,4,4",
    "encoder_dim": "192,256,384,512,384,256",
    "query_head_dim": "32",
    "value_head_dim": "12",
    "pos_head_dim": "4",
    "pos_dim": 48,
    "encoder_unmasked_dim": "192,192,256,256,256,192",
    "cnn_module_kernel": "31,31,15,15,15,31",
    "decoder_dim": 512,
    "joiner_dim": 512,
    "context_size": 2,
    "vocab_size": 500,
    "blank_id": 0,
    "causal": False,
    "chunk_size": "16,32,64,-1",
    "left_context_frames": "64,128,256,-1",
    "use_transducer": True,
    "use_ctc": False,
}


def reference_asr_model(params: Mapping[str, Any] | None = None, **overrides: Any) -> Any:
    """The reference's ``AsrModel`` (Zipformer2 transducer) from icefall-named params.

    ``params`` (a dict or namespace) and ``overrides`` replace
    :data:`ICEFALL_DEFAULTS`; keys the model does not take are ignored, as in
    icefall's ``get_model``. Comma strings and plain ints are both accepted.
    """
    ref = load_reference()
    cfg = dict(ICEFALL_DEFAULTS)
    if params is not None:
        src = params if isinstance(params, Mapping) else vars(params)
        cfg.update({k: v for k, v in src.items() if k in ICEFALL_DEFAULTS})
    cfg.update({k: v for k, v in overrides.items() if k in ICEFALL_DEFAULTS})
    unknown = set(overrides) - set(ICEFALL_DEFAULTS)
    if unknown:
        raise TypeError(f"reference_asr_model: unknown keys {sorted(unknown)}")
    as_str = (
        "num_encoder_layers downsampling_factor feedforward_dim num_heads encoder_dim "
        "query_head_dim value_head_dim pos_head_dim encoder_unmasked_dim cnn_module_kernel "
        "chunk_size left_context_frames"
    ).split()
    for key in as_str:
        cfg[key] = str(cfg[key])
    return ref.model.AsrModel(**cfg)
