/*
 * zoo_emu_plugin_enqueue: the TensorRT plugins' runtime path on the CPU, without TensorRT. Finds the creator through
 * getCreators (as TensorRT's registry does), creates the plugin in the runtime phase from the given fields, and calls
 * IPluginV3OneRuntime::onShapeChange + enqueue with host buffers; the kernels it launches are the emulated ones
 * (zooCudaEmu.h). Built only into the emulated plugin library (export/build_plugins.py: build_emulated(plugins=True));
 * plugins/harness.py compares its outputs with the PyTorch references, so the creator's field parsing and each
 * plugin's mapping of tensor shapes to kernel arguments are checked with real numbers.
 */
#include "NvInferRuntime.h"
#include "zooScanKernels.h"

#include <cstdio>
#include <cstring>
#include <memory>
#include <vector>

using namespace nvinfer1;

extern "C" IPluginCreatorInterface* const* getCreators(int32_t& nbCreators);

namespace
{

constexpr int32_t kMaxDims = 8;

DataType toTrt(int32_t zooDType)
{
    switch (zooDType)
    {
    case kZOO_FLOAT16: return DataType::kHALF;
    case kZOO_BFLOAT16: return DataType::kBF16;
    default: return DataType::kFLOAT;
    }
}

std::vector<PluginTensorDesc> descs(int32_t n, int32_t const* dtypes, int32_t const* nbDims, int64_t const* dims)
{
    std::vector<PluginTensorDesc> out(static_cast<size_t>(n));
    for (int32_t i = 0; i < n; ++i)
    {
        PluginTensorDesc& d = out[static_cast<size_t>(i)];
        std::memset(&d, 0, sizeof d);
        d.dims.nbDims = nbDims[i];
        for (int32_t j = 0; j < nbDims[i] && j < kMaxDims; ++j)
        {
            d.dims.d[j] = dims[i * kMaxDims + j];
        }
        d.type = toTrt(dtypes[i]);
        d.format = TensorFormat::kLINEAR;
        d.scale = 1.f;
    }
    return out;
}

void say(char* err, int32_t errLen, char const* msg)
{
    if (err != nullptr && errLen > 0)
    {
        std::snprintf(err, static_cast<size_t>(errLen), "%s", msg);
    }
}

} // namespace

//! Returns enqueue's status (0 = success), or -2 when no creator has that name, -3 when createPlugin fails, -4 when
//! the plugin has no runtime interface, -5 when onShapeChange fails, -6 when configurePlugin (the build) fails; `err`
//! says which.
extern "C" ZOO_API int32_t zoo_emu_plugin_enqueue(char const* opType, int32_t nbFields, char const* const* fieldNames,
    int32_t const* fieldValues, int32_t nbInputs, int32_t const* inDTypes, int32_t const* inNbDims,
    int64_t const* inDims, void const* const* inputs, int32_t nbOutputs, int32_t const* outDTypes,
    int32_t const* outNbDims, int64_t const* outDims, void* const* outputs, char* err, int32_t errLen)
{
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    IPluginCreatorV3One* creator = nullptr;
    for (int32_t i = 0; i < n; ++i)
    {
        auto* c = static_cast<IPluginCreatorV3One*>(creators[i]);
        if (std::strcmp(c->getPluginName(), opType) == 0)
        {
            creator = c;
        }
    }
    if (creator == nullptr)
    {
        say(err, errLen, "no creator of that name");
        return -2;
    }
    std::vector<PluginField> fields;
    for (int32_t i = 0; i < nbFields; ++i)
    {
        fields.emplace_back(fieldNames[i], &fieldValues[i], PluginFieldType::kINT32, 1);
    }
    PluginFieldCollection fc{static_cast<int32_t>(fields.size()), fields.data()};
    std::unique_ptr<IPluginV3> plugin(creator->createPlugin("emulated", &fc, TensorRTPhase::kRUNTIME));
    if (!plugin)
    {
        say(err, errLen, "createPlugin returned null");
        return -3;
    }
    auto* runtime = static_cast<IPluginV3OneRuntime*>(plugin->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
    if (runtime == nullptr)
    {
        say(err, errLen, "the plugin has no runtime capability");
        return -4;
    }
    std::vector<PluginTensorDesc> in = descs(nbInputs, inDTypes, inNbDims, inDims);
    std::vector<PluginTensorDesc> out = descs(nbOutputs, outDTypes, outNbDims, outDims);
    // what the builder asks first: configurePlugin with the profile's dims (here the call's own, as min/opt/max), so a
    // plugin that refuses these shapes at build time (an engine that could never run) is found here too
    auto* build = static_cast<IPluginV3OneBuild*>(plugin->getCapabilityInterface(PluginCapabilityType::kBUILD));
    if (build != nullptr)
    {
        std::vector<DynamicPluginTensorDesc> din(in.size()), dout(out.size());
        for (size_t i = 0; i < in.size(); ++i)
        {
            din[i].desc = in[i];
            din[i].min = din[i].opt = din[i].max = in[i].dims;
        }
        for (size_t i = 0; i < out.size(); ++i)
        {
            dout[i].desc = out[i];
            dout[i].min = dout[i].opt = dout[i].max = out[i].dims;
        }
        if (build->configurePlugin(din.data(), nbInputs, dout.data(), nbOutputs) != 0)
        {
            say(err, errLen, "configurePlugin failed: the engine build would fail (the plugin logged why on stderr)");
            return -6;
        }
    }
    if (runtime->onShapeChange(in.data(), nbInputs, out.data(), nbOutputs) != 0)
    {
        say(err, errLen, "onShapeChange failed");
        return -5;
    }
    int32_t const rc = runtime->enqueue(in.data(), out.data(), inputs, outputs, nullptr, nullptr);
    if (rc != 0)
    {
        say(err, errLen, "enqueue failed (the plugin logged why on stderr)");
    }
    return rc;
}
