"""Model cards (``models.json``) and verified loading of the weight files they name.

A model directory holds ``models.json`` — ``{"models": [card, ...]}`` — and the files the cards
name. Every file is checked against its card's sha256 before it is opened: a missing or
altered file is refused with a message naming it.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

BUNDLED_DIR = Path(__file__).resolve().parent.parent / "data" / "models"
CARD_FILE = "models.json"


class ModelError(RuntimeError):
    """A model directory or weight file that cannot be trusted or used."""


def sha256sum(path: Path | str, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def model_dir_or_default(model_dir: Path | str | None) -> Path:
    return Path(model_dir) if model_dir else BUNDLED_DIR


def cards_sha256(model_dir: Path | str | None = None) -> str:
    """The sha256 of a model directory's card file, which lists every weight file's sha256:
    it changes whenever any model in the directory does ("" when there is no card file)."""
    path = model_dir_or_default(model_dir) / CARD_FILE
    return sha256sum(path) if path.exists() else ""


def load_cards(model_dir: Path | str | None = None) -> dict[str, dict]:
    """The cards of a model directory by name, in file order; each gets ``_dir`` added."""
    folder = model_dir_or_default(model_dir)
    path = folder / CARD_FILE
    if not path.exists():
        raise ModelError(f"{folder}: no {CARD_FILE}; not a bids_brainage model directory")
    try:
        registry = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: not valid JSON ({exc})") from exc
    cards = {}
    for card in registry.get("models", []):
        card = dict(card, _dir=str(folder))
        cards[card["name"]] = card
    if not cards:
        raise ModelError(f"{path}: lists no models")
    return cards


def default_models(cards: dict[str, dict]) -> list[str]:
    """The models run when ``--models`` is not given: those the card marks as default."""
    names = [name for name, card in cards.items() if card.get("default", True)]
    return names or list(cards)


def select_models(cards: dict[str, dict], requested) -> list[str]:
    """Resolve ``--models`` (``all`` = every card) and refuse unknown names."""
    if not requested:
        return default_models(cards)
    if "all" in requested:
        return list(cards)
    unknown = [name for name in requested if name not in cards]
    if unknown:
        raise ModelError(f"unknown model(s) {', '.join(unknown)}; available: {', '.join(cards)}")
    names = list(dict.fromkeys(requested))
    # an ensemble needs its members: run them too, they are cheap next to preprocessing
    for name in list(names):
        for member in cards[name].get("members", {}):
            if member not in names:
                names.insert(names.index(name), member)
    return names


def selected_features(model_dir, requested) -> set[str]:
    """The input features (``histogram+tissue``, ``tissue``, ...) the selected models read;
    empty when the model directory cannot be read (the run itself reports that)."""
    try:
        cards = load_cards(model_dir)
        return {(cards[n].get("input") or {}).get("feature", "histogram")
                for n in select_models(cards, requested) if cards[n].get("kind") != "ensemble"}
    except Exception:  # noqa: BLE001 - the model check refuses such a directory, loudly
        return set()


def verified_file(card: dict, key: str = "file") -> Path:
    """The path of a card's file after checking that it exists and matches its sha256."""
    path = Path(card["_dir"]) / card[key]
    expected = card.get("sha256" if key == "file" else f"{key}_sha256")
    if not path.exists():
        raise ModelError(f"model {card['name']!r}: weight file {path} is missing")
    if not expected:
        raise ModelError(f"model {card['name']!r}: the card gives no sha256 for {path.name}")
    actual = sha256sum(path)
    if actual != expected:
        raise ModelError(
            f"model {card['name']!r}: {path} has sha256 {actual[:12]}…, the card says "
            f"{expected[:12]}…; the file is altered or corrupt and will not be loaded"
        )
    return path


def verify_all(cards: dict[str, dict], names) -> None:
    for name in names:
        if cards[name].get("file"):
            verified_file(cards[name])
