// Temporaries beside a published file: "<name>.tmp.<pid>" in its directory,
// created with O_EXCL | O_NOFOLLOW, renamed into place when complete. A
// process killed midway leaves its temporary; the next writer of the same
// name removes it once its owner is gone.
#pragma once

#include <string>

#include "hotboot/status.h"

namespace hotboot {

// path + ".tmp." + this process's id.
std::string TempPathFor(const std::string& path);
// Removes "<name>.tmp.<pid>" files beside path whose process no longer
// exists, and this process's own leftover. Best effort: errors are ignored.
void SweepStaleTemporaries(const std::string& path);
// Creates TempPathFor(path) exclusively (after the sweep), mode `mode`.
Result<int> CreateTemporary(const std::string& path, unsigned mode);
// fsync of the directory that holds path (after a rename into it).
void SyncParentDir(const std::string& path);

}  // namespace hotboot
