// zooCudaEmu stand-in for CUDA's runtime API header (host compilation of the scan kernels, see zooCudaEmu.h).
#pragma once
#include "zooCudaEmu.h"
