"""Runtime support: device and thread selection, memory monitoring, atomic file output, progress."""
