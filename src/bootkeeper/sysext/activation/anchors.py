"""The trust anchors an activation judges signatures with, and their export to ``/run/verity.d``
(where systemd-sysext looks when it checks a signature in userspace), as the report records them."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from bootkeeper.errors import BootkeeperError
from bootkeeper.sysext.activation.outcome import Exported, Trust, fault

if TYPE_CHECKING:
    from cryptography import x509

    from bootkeeper.config import Sysext


def load(root: Path, cfg: Sysext, efivars: Path | None) -> tuple[list[x509.Certificate], Trust]:
    """The anchors and what the report says of them. Anything unexpected here trusts nothing: the
    images then fail, and are still judged and reported one by one."""
    from bootkeeper.sysext import trust

    try:
        store = trust.load(cfg, root, efivars, strict=False)
    except Exception as exc:  # boot-time boundary: fail closed, never stop the run
        store = trust.TrustStore(problems=[f"trust anchors cannot be loaded ({fault(exc)}); none is trusted"])
    said = Trust(
        trusted=[a.as_json() for a in store.anchors],
        revoked=[a.as_json(why) for a, why in store.revoked],
        problems=store.problems,
    )
    # systemd-sysext checks the signatures again, against the verity.d folders: what bootkeeper
    # trusts (config, firmware db) must be there too, or it refuses the images placed below.
    export_dir = root / trust.EXPORT_DIR
    try:
        written, removed = trust.export(store, export_dir)
    except Exception as exc:  # an export that fails is reported, the images still judged
        why = str(exc) if isinstance(exc, BootkeeperError) else fault(exc)
        said["problems"] = [*store.problems, f"export to {export_dir}: {why}"]
    else:
        said["exported"] = Exported(dir=str(export_dir), written=written, removed=removed)
    return store.certificates, said
