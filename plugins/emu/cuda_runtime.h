// zooCudaEmu stand-in for CUDA's runtime header (host compilation of the scan kernels, see zooCudaEmu.h).
#pragma once
#include "zooCudaEmu.h"
