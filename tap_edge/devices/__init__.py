"""Step 1, where it must run: device profiles (memory regions, reservations, runtimes and their bit-widths),
read from the YAML files in ``device_profiles/`` or a user's own file, on one registry."""

from tap_edge.devices.profile import (
    Core,
    DeviceProfile,
    MemoryRegion,
    MLPerfTiny,
    Reservation,
    Runtime,
    device_list,
    get_device,
    list_devices,
    load_profile,
    parse_profile,
    register_device,
)

__all__ = ["Core", "DeviceProfile", "MLPerfTiny", "MemoryRegion", "Reservation", "Runtime", "device_list", "get_device",
           "list_devices", "load_profile", "parse_profile", "register_device"]
