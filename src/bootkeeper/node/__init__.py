"""The join layer: where assess, sysext and measure meet for one task of the node (docs/design.md,
Layers). It prints nothing and returns typed results; cli/ parses options and renders them."""
