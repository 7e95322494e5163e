// Library entry points read by TensorRT's plugin registry (IPluginRegistry::loadLibrary, trtexec --dynamicPlugins,
// trtexec --setPluginsToSerialize): getCreators + setLoggerFinder. No libnvinfer symbol is needed at load time, so
// the same .so loads into the full, the lean and the dispatch runtimes.
//
// Loaders that only dlopen a plugin library and expect it to register itself (Triton's tensorrt backend
// `plugins=` option, LD_PRELOAD) are served by an opt-in load-time registration: with ZOO_TRT_PLUGINS_AUTOREGISTER=1
// in the environment the library looks up getPluginRegistry() in the TensorRT library already loaded in the process
// and registers its creators there, but only when that TensorRT has the major version of the headers it was built
// with (IPluginRegistry's vtable differs across majors). Leave it unset for loadLibrary / --dynamicPlugins (a second
// registration of the same creators would be refused).
#include "zooScanPluginBase.h"
#include "NvInferVersion.h"

#include <cstdio>
#include <cstdlib>
#include <dlfcn.h>

using namespace nvinfer1;

extern "C"
{

ZOO_API void setLoggerFinder(ILoggerFinder* finder)
{
    zoo::plugin::setLoggerFinder(finder);
}

ZOO_API IPluginCreatorInterface* const* getCreators(int32_t& nbCreators)
{
    static IPluginCreatorInterface* const kCreators[] = {
        zoo::plugin::selectiveScanCreator(),
        zoo::plugin::ssdScanCreator(),
        zoo::plugin::lruScanCreator(),
    };
    nbCreators = static_cast<int32_t>(sizeof(kCreators) / sizeof(kCreators[0]));
    return kCreators;
}

} // extern "C"

namespace
{
struct AutoRegister
{
    AutoRegister()
    {
        char const* env = std::getenv("ZOO_TRT_PLUGINS_AUTOREGISTER");
        if (env == nullptr || env[0] != '1')
        {
            return;
        }
        using GetRegistry = IPluginRegistry* (*) ();
        using GetMajor = int32_t (*)();
        void* sym = dlsym(RTLD_DEFAULT, "getPluginRegistry");
        void* major = dlsym(RTLD_DEFAULT, "getInferLibMajorVersion");
        for (char const* lib : {"libnvinfer.so.11", "libnvinfer.so.10", "libnvinfer.so", "libnvinfer_lean.so.11",
                 "libnvinfer_lean.so.10", "libnvinfer_dispatch.so.11", "libnvinfer_dispatch.so.10"})
        {
            if (sym != nullptr && major != nullptr)
            {
                break;
            }
            if (void* h = dlopen(lib, RTLD_LAZY | RTLD_NOLOAD))
            {
                sym = dlsym(h, "getPluginRegistry");
                major = dlsym(h, "getInferLibMajorVersion");
            }
        }
        if (sym == nullptr || major == nullptr)
        {
            std::fprintf(stderr, "[zoo_trt_plugins] ZOO_TRT_PLUGINS_AUTOREGISTER=1 but no TensorRT library is loaded in "
                                 "this process: creators not registered\n");
            return;
        }
        int32_t const rtMajor = reinterpret_cast<GetMajor>(major)();
        if (rtMajor != NV_TENSORRT_MAJOR)
        {
            std::fprintf(stderr, "[zoo_trt_plugins] loaded TensorRT is %d.x but the plugins were built with %d.x "
                                 "headers: not auto-registering (rebuild with that TensorRT's headers)\n",
                rtMajor, NV_TENSORRT_MAJOR);
            return;
        }
        IPluginRegistry* reg = reinterpret_cast<GetRegistry>(sym)();
        int32_t n = 0;
        IPluginCreatorInterface* const* creators = getCreators(n);
        for (int32_t i = 0; reg != nullptr && i < n; ++i)
        {
            reg->registerCreator(*creators[i], zoo_spec::kPluginNamespace);
        }
    }
};
AutoRegister gAutoRegister;
} // namespace
