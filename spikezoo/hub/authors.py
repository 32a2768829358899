"""Where the authors published the weights of each tag (their repositories' READMEs)."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["AUTHORS_FILES", "AuthorsFile", "drive_file_url"]


def drive_file_url(file_id: str) -> str:
    """The page of a Google Drive file, for people (downloads use the ``uc`` endpoint)."""
    return f"https://drive.google.com/file/d/{file_id}/view"


@dataclass(frozen=True)
class AuthorsFile:
    """An authors' checkpoint: a Google Drive file (``drive_id``) spikezoo can download and
    convert, or only a ``page`` (e.g. a Drive folder) to download from by hand.

    ``sha256`` is the digest a download must have; ``None`` where nobody has recorded it yet.
    """

    page: str
    drive_id: str | None = None
    sha256: str | None = None


def _sdt(file_id: str) -> AuthorsFile:
    return AuthorsFile(page=drive_file_url(file_id), drive_id=file_id)


_RESFORMER_FOLDER = AuthorsFile(
    page="https://drive.google.com/drive/folders/1sAFHKF9QZC2P0aSoC9bdLqgW8TfLjFSC"
)

_META_SPIKEFORMER_FOLDER = AuthorsFile(
    page="https://drive.google.com/drive/folders/12JcIRG8BF6JcgPsXIetSS14udtHXeSSx"
)

#: ``model.tag`` -> the authors' file. The SDT ImageNet checkpoints are timm-script training
#: checkpoints (``{"state_dict": {"module.<key>": ...}, "args": Namespace, ...}``); the
#: SpikingResformer ones sit in one Drive folder, and so do Meta-SpikeFormer's
#: (``main_finetune.py`` checkpoints, ``{"model": ..., "args": Namespace, ...}``). No CIFAR
#: or event weights were released.
AUTHORS_FILES: dict[str, AuthorsFile] = {
    "sdt_8_384.in1k": _sdt("10oH_zkwB4FDtFLgmZ_lI8e0tFjRzrXyD"),
    "sdt_6_512.in1k": _sdt("1hsShpFBKYpMK2TmpuoyBFORcLAuMHrx7"),
    "sdt_8_512.in1k": _sdt("1n59WNSBgP2VyAW2nfJX2Wvx5rgNJEMXI"),
    "sdt_10_512.in1k": _sdt("1l-c3QY5r4IFmYUmGPZXRHP_W7iC1sdP8"),
    "sdt_8_768.in1k": _sdt("1R-MaeFV8d2Y0pIGBSjklOGWhaF8dLHf4"),
    "spikingresformer_ti.in1k": _RESFORMER_FOLDER,
    "spikingresformer_s.in1k": _RESFORMER_FOLDER,
    "spikingresformer_m.in1k": _RESFORMER_FOLDER,
    "spikingresformer_l.in1k": _RESFORMER_FOLDER,
    "sdt_v2_8_512.in1k_kd": _META_SPIKEFORMER_FOLDER,
}
