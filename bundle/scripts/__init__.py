"""Custom code of the GDKVM echo bundle: the network, echo data I/O and transforms, clinical measurements."""
