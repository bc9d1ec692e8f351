"""Upload a saved model folder (config.json, model.safetensors, README.md model card) to the Hugging Face hub.

Needs a token (`hf auth login`, or HF_TOKEN) and the network; the repository is created if it does not exist.

Examples:
  segformer push runs/demo/model your-name/segformer-b0-shapes
  segformer push runs/ade/final your-name/segformer-b2-ade --private
  segformer push runs/ade/final your-name/segformer-b2-ade --dry-run   # check, show the licence, upload nothing
"""

from __future__ import annotations

import argparse

TRUE = ("1", "on", "yes", "true")


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model_dir", help="a folder written by save_pretrained (or segformer train / demo)")
    p.add_argument("repo_id", help="hub repository, e.g. your-name/segformer-b0-shapes")
    p.add_argument("--private", action="store_true", help="create the repository as private")
    p.add_argument("--message", default=None, help="commit message (default: 'Upload SegFormer model')")
    p.add_argument("--revision", default=None, help="branch to push to (default: main)")
    p.add_argument(
        "--dry-run", action="store_true", help="check the folder and its licence, write a missing card; upload nothing"
    )


def run(args: argparse.Namespace) -> int:
    import os
    from pathlib import Path

    folder = Path(args.model_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder}: no such folder")
    missing = [name for name in ("config.json", "model.safetensors") if not (folder / name).is_file()]
    if missing:
        raise ValueError(f"{folder}: not a saved model folder (no {' or '.join(missing)}); use save_pretrained")
    if args.repo_id.count("/") != 1 or not all(args.repo_id.split("/")):
        raise ValueError(f"repository id {args.repo_id!r} must look like owner/name")
    if not (folder / "README.md").is_file():
        from ..fileio import write_text
        from ..model.loading import load_model
        from ..model.modelcard import model_card_for

        write_text(folder / "README.md", model_card_for(load_model(folder)))
        print(f"wrote the model card {folder / 'README.md'}")
    print(f"licence: {check_licence(folder)}")
    if args.dry_run:
        files = sorted(
            p.name for p in folder.iterdir() if p.is_file() and not p.name.startswith(".") and p.suffix != ".tmp"
        )
        print(f"dry run: would upload {', '.join(files)} to {args.repo_id}")
        return 0

    try:
        import huggingface_hub
        from huggingface_hub import HfApi
    except ImportError:
        raise RuntimeError("push needs huggingface_hub: pip install huggingface_hub") from None
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in TRUE or huggingface_hub.constants.HF_HUB_OFFLINE:
        raise RuntimeError("cannot push while offline (HF_HUB_OFFLINE is set); unset it where there is internet")
    token = huggingface_hub.get_token()
    if not token:
        raise RuntimeError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (a token with write access)")
    api = HfApi(token=token)
    try:
        url = api.create_repo(args.repo_id, private=args.private, exist_ok=True, repo_type="model")
        api.upload_folder(
            folder_path=str(folder),
            repo_id=args.repo_id,
            repo_type="model",
            revision=args.revision,
            commit_message=args.message or "Upload SegFormer model",
            ignore_patterns=["*.tmp", ".*"],
        )
    except Exception as e:  # network, permissions, auth: one line for every kind
        first = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise RuntimeError(f"could not push to {args.repo_id} ({type(e).__name__}: {first})") from None
    print(f"pushed {folder} to {url}")
    return 0


def check_licence(folder) -> str:  # folder: Path
    """The weights' licence line from config.json's record; a card that calls NVIDIA-derived weights anything but
    non-commercial is refused (one line), so no push labels them permissive."""
    import json

    from ..model.licence import origin_of, summary

    config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    record = config.get("segformer_licence")
    card = (folder / "README.md").read_text(encoding="utf-8")
    front = card.split("---")[1] if card.startswith("---") else ""
    if origin_of(record) == "nvidia" and "license_name: nvidia-source-code-license" not in front:
        raise ValueError(
            f"{folder / 'README.md'}: the weights derive from NVIDIA's (non-commercial, config.json) but the card's "
            "front matter does not say license: other / license_name: nvidia-source-code-license; delete the card "
            "to have it written again"
        )
    return summary(record)
