# The charge point's hardware-free core (docs/architecture.md).
#
# sys.modules and this package's table are grown to their final size first, while the heap
# is young: grown later, by the first command or `import diag`, each needs one new block a
# fragmented heap may lack (compat.module_room). An MQTT station with its meter, a command
# and diag holds about 42 names here and 50 modules; OCPP imports its own package.
from firmware import compat

compat.module_room("firmware", 64, 56)
