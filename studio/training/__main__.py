import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # shared CPU: do not spin-wait (before torch is imported)

from .cli import main  # noqa: E402  (the package __init__ has already put the hub offline)

main()
