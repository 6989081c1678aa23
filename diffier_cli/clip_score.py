"""CLIP score with the CLIP model fetched like every other model here: a hub id at a revision or
a local folder, the offline switch honoured, exit code 3 when it is missing."""

from __future__ import annotations

from pathlib import Path

from models.errors import ModelUnavailable, first_line

CLIP_FILES = ["*.json", "*.txt", "model.safetensors"]  # config, tokenizer, processor, safe weights only


def fetch_clip(source: str, revision: str | None, offline: bool, cache_dir: str | None) -> tuple[Path, str | None]:
    """(folder, hub commit or None for a local folder)."""
    local = Path(source).expanduser()
    if local.is_dir():
        return local.resolve(), None
    from huggingface_hub import snapshot_download

    try:
        folder = Path(snapshot_download(source, revision=revision, cache_dir=cache_dir, local_files_only=offline, allow_patterns=CLIP_FILES))
    except Exception as exc:  # noqa: BLE001 - any failure to fetch means: metric model unavailable
        raise ModelUnavailable(
            f"cannot get CLIP model {source}@{revision or 'main'}: {first_line(exc)} [{type(exc).__name__}]; "
            f"pre-download it with `hf download {source}` or pass --clip-model /path/to/folder"
        ) from exc
    return folder, folder.name if folder.parent.name == "snapshots" else None


class ClipScore:
    """CLIP score of one image against one text: 100·max(cos(E_I, E_T), 0) (Hessel et al. 2021,
    Eq. 1 with w = 100, as torchmetrics' `CLIPScore` and the diffusion papers report it). Written
    on transformers directly: torchmetrics 1.9's CLIPScore breaks on transformers 5, whose
    `get_image_features` returns an output object instead of a tensor."""

    def __init__(self, model, processor, device):
        self.model = model.to(device).eval()
        self.processor = processor
        self.device = device

    def __call__(self, image, text: str) -> float:
        import torch

        inputs = self.processor(text=[text], images=[image.convert("RGB")], return_tensors="pt", padding=True, truncation=True)
        with torch.no_grad():
            output = self.model(**inputs.to(self.device))
        # CLIPModel.forward returns both embeddings already L2-normalised.
        cosine = (output.image_embeds * output.text_embeds).sum(dim=-1)
        return max(100.0 * float(cosine), 0.0)


def load_clip_score(source: str, revision: str | None, offline: bool, cache_dir: str | None, device) -> tuple[ClipScore, dict]:
    """The scorer on `device` over the fetched model, and the model's record (id, revision)."""
    from transformers import CLIPModel, CLIPProcessor

    folder, commit = fetch_clip(source, revision, offline, cache_dir)
    if not (folder / "model.safetensors").is_file():
        raise ModelUnavailable(f"{folder} has no model.safetensors; diffier loads CLIP weights from safetensors only")
    try:
        model, processor = CLIPModel.from_pretrained(folder), CLIPProcessor.from_pretrained(folder)
    except Exception as exc:  # noqa: BLE001 - a folder transformers cannot read is not a usable CLIP
        raise ModelUnavailable(f"{folder} is not a CLIP model folder: {first_line(exc)}") from exc
    return ClipScore(model, processor, device), {"id": source if commit is not None else str(folder), "revision": commit}
