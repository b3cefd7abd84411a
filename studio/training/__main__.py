import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared CPU: do not spin-wait

from .cli import main  # noqa: E402

main()
