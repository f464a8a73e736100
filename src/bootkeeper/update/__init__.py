"""Releases that come to the node: where they are (``source``), what one is (``release``), how they are
fetched from a registry (``oci``) or an OCI layout (``layout``), staged on the persistent partition and
checked while they stream (``stage``, ``acquire``). A wing on base and esp only: nothing here trusts
the transport; the node layer verifies what was fetched before the upgrade transaction runs
(docs/updates.md)."""
