"""Devices: the one device type and the devices file (spec: `Device`, defined with the app schema in
apps/schema.py and re-exported here), how a CPU is slowed to emulate a slower one (slowdown: stretched
time; cpuquota: a cgroup quota), the torch device a CLI computes on (torch_device: `--torch-device`), and
the fingerprint of the machine a profile was measured on."""
