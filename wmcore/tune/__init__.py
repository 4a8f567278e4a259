"""`wm tune`: measure this machine and write the fastest settings that keep accuracy (an app above evaluate)."""
