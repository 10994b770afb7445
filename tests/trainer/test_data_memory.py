"""A dataset of 1200 images is prepared and trained from without a decoded copy of every image in memory."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from PIL import Image

pytestmark = pytest.mark.trainer

IMAGES = 1200
SIDE = 256
"""256 x 256 RGB: 192 KiB decoded each, 225 MiB for all (a few hundred bytes as PNG files)."""
BOUND_MIB = 64
"""Peak memory growth allowed while preparing (a handful of images in flight, plus the samples)."""

PROBE = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    from lora_operator.api import Dataset, ModelFamily
    from lora_trainer.data import prepare_dataset

    def peak_kib():
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line.split()[1] for line in status if line.startswith("VmHWM:")))

    before = peak_kib()
    dataset = Dataset.model_validate({"crop": {"mode": "center", "size": "256x256"}, "validationSplit": 0.1})
    prepared = prepare_dataset(dataset, Path(sys.argv[1]), ModelFamily.SD15, seed=0)
    decoded = [s.decoded().size for s in prepared.train[:2]]
    print(json.dumps({"grew_kib": peak_kib() - before, "train": len(prepared.train),
                      "validation": len(prepared.validation), "decoded": decoded}))
""")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_preparing_1200_images_keeps_peak_memory_bounded(tmp_path):
    for i in range(IMAGES):
        image = Image.new("RGB", (SIDE, SIDE), (i % 256, (i // 256) * 40, 90))
        image.paste((255 - i % 256, 30, 200), (i % 200, 10, i % 200 + 40, 60))
        image.save(tmp_path / f"img{i:04d}.png", compress_level=1)
    done = subprocess.run([sys.executable, "-c", PROBE, str(tmp_path)], capture_output=True, text=True,
                          timeout=300, check=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["train"] == 1080 and result["validation"] == 120
    assert result["decoded"] == [[SIDE, SIDE], [SIDE, SIDE]]
    all_decoded_mib = IMAGES * SIDE * SIDE * 3 / 2**20
    assert result["grew_kib"] / 1024 < BOUND_MIB < all_decoded_mib, result
