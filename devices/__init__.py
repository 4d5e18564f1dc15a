"""Device identity and emulation: what a device is (spec), how a CPU is slowed to emulate a
slower one (slowdown: stretched time; cpuquota: a cgroup quota), and the fingerprint of the
machine a profile was measured on."""
