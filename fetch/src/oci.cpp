// The OCI registry client (distribution API over libcurl); see oci.h.
#include "hotboot/oci.h"

namespace hotboot::fetch {}  // namespace hotboot::fetch
