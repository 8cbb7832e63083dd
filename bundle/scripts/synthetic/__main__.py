"""Command line: ``python -m scripts.synthetic --out DIR --patients N --seed S [--layout camus|echonet|both]``."""

from __future__ import annotations

from pathlib import Path

from .writers import write_camus_dataset, write_echonet_dataset

LAYOUTS = ("camus", "echonet", "both")


def main(
    out: str,
    patients: int = 20,
    seed: int = 0,
    layout: str = "camus",
    size: int = 256,
    min_frames: int = 10,
    max_frames: int = 22,
    videos: int | None = None,
    reverse_fraction: float = 0.2,
    failures: str | tuple | None = None,
    hard: bool = False,
) -> str:
    """Write a synthetic data set.

    Args:
        out: output folder (CAMUS files go to ``out`` for ``camus``; ``out/camus`` and ``out/echonet`` for ``both``).
        patients: number of CAMUS patients (two views each), and of EchoNet videos unless ``videos`` is given.
        seed: random seed; the same seed writes the same files.
        layout: ``camus``, ``echonet`` or ``both``.
        size: CAMUS image size (square); EchoNet videos are always 112x112.
        min_frames, max_frames: range of the CAMUS half-sequence length.
        videos: number of EchoNet videos (default: ``patients``).
        reverse_fraction: fraction of CAMUS half sequences stored ES..ED.
        failures: failure modes: comma-separated names of ``scripts.synthetic.FAILURE_MODES``, ``none`` (the
            baseline look) or ``all``; default: the realistic mix (each mode drawn per patient).
        hard: the hard split: every CAMUS half sequence has >= 3 consecutive frames with part of the LV border hidden.
    """
    from .failures import resolve_failures

    resolve_failures(failures)
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; expected one of {LAYOUTS}")
    if not isinstance(patients, int) or patients <= 0:
        raise ValueError(f"patients must be a positive integer, got {patients!r}")
    root = Path(out)
    if layout in ("camus", "both"):
        dest = root / "camus" if layout == "both" else root
        write_camus_dataset(
            dest, patients, seed, size, (min_frames, max_frames), reverse_fraction, True, failures, bool(hard)
        )
    if layout in ("echonet", "both"):
        dest = root / "echonet" if layout == "both" else root
        write_echonet_dataset(
            dest, patients if videos is None else videos, seed, progress=True, failures=failures, hard=bool(hard)
        )
    return str(root)


if __name__ == "__main__":
    import fire

    fire.Fire(main)
