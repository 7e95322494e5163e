#include "zooScanPluginBase.h"

#include <vector>

#include <cstdio>
#include <cstring>

using namespace nvinfer1;

namespace zoo
{
namespace plugin
{

namespace
{
ILoggerFinder* gLoggerFinder{nullptr};

void logAt(ILogger::Severity sev, char const* msg) noexcept
{
    ILogger* logger = gLoggerFinder != nullptr ? gLoggerFinder->findLogger() : nullptr;
    if (logger != nullptr)
    {
        logger->log(sev, msg);
    }
    else if (sev <= ILogger::Severity::kWARNING)
    {
        std::fprintf(stderr, "[zoo_trt_plugins] %s\n", msg);
    }
}
} // namespace

void setLoggerFinder(ILoggerFinder* finder) noexcept
{
    gLoggerFinder = finder;
}
void logError(char const* msg) noexcept
{
    logAt(ILogger::Severity::kERROR, msg);
}
void logVerbose(char const* msg) noexcept
{
    logAt(ILogger::Severity::kVERBOSE, msg);
}

int32_t toZooDType(DataType t) noexcept
{
    switch (t)
    {
    case DataType::kFLOAT: return kZOO_FLOAT32;
    case DataType::kHALF: return kZOO_FLOAT16;
    case DataType::kBF16: return kZOO_BFLOAT16;
    default: return -1;
    }
}

bool readIntField(PluginFieldCollection const* fc, char const* name, int32_t& value) noexcept
{
    if (fc == nullptr)
    {
        return false;
    }
    for (int32_t i = 0; i < fc->nbFields; ++i)
    {
        PluginField const& f = fc->fields[i];
        if (f.name == nullptr || std::strcmp(f.name, name) != 0 || f.data == nullptr || f.length < 1)
        {
            continue;
        }
        switch (f.type)
        {
        case PluginFieldType::kINT32: value = *static_cast<int32_t const*>(f.data); return true;
        case PluginFieldType::kINT64: value = static_cast<int32_t>(*static_cast<int64_t const*>(f.data)); return true;
        case PluginFieldType::kINT16: value = *static_cast<int16_t const*>(f.data); return true;
        case PluginFieldType::kINT8: value = *static_cast<int8_t const*>(f.data); return true;
        default: logError("zoo plugin: unsupported field type for an integer field"); return false;
        }
    }
    return false;
}

IPluginCapability* ZooScanPluginBase::getCapabilityInterface(PluginCapabilityType type) noexcept
{
    switch (type)
    {
    case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuildV2*>(this);
    case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
    case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
    }
    return nullptr;
}

int32_t ZooScanPluginBase::configurePlugin(
    DynamicPluginTensorDesc const* in, int32_t nbIn, DynamicPluginTensorDesc const*, int32_t nbOut) noexcept
{
    if (nbIn != nbInputs() || nbOut != getNbOutputs())
    {
        return -1;
    }
    // the profile's bounds: the largest each dim may be (N <= 256) and the smallest (T >= 1); a fixed dim is both
    for (bool largest : {true, false})
    {
        std::vector<Dims> dims;
        for (int32_t i = 0; i < nbIn; ++i)
        {
            dims.push_back(largest ? in[i].max : in[i].min);
        }
        if (char const* msg = shapeError(dims.data(), nbIn))
        {
            logError(msg);
            return -1;
        }
    }
    return 0;
}

int32_t ZooScanPluginBase::onShapeChange(
    PluginTensorDesc const* in, int32_t nbIn, PluginTensorDesc const*, int32_t) noexcept
{
    if (nbIn != nbInputs())
    {
        return -1;
    }
    std::vector<Dims> dims;
    for (int32_t i = 0; i < nbIn; ++i)
    {
        dims.push_back(in[i].dims);
    }
    if (char const* msg = shapeError(dims.data(), nbIn))
    {
        logError(msg);
        return -1;
    }
    return 0;
}

int32_t ZooScanPluginBase::getOutputDataTypes(
    DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes, int32_t nbIn) const noexcept
{
    if (nbIn != nbInputs() || nbOutputs != getNbOutputs())
    {
        return -1;
    }
    // activation outputs take the type of the first activation input (position 0 in every spec op)
    for (int32_t i = 0; i < nbOutputs; ++i)
    {
        outputTypes[i] = isActivation(nbIn + i) ? inputTypes[0] : DataType::kFLOAT;
    }
    return 0;
}

bool ZooScanPluginBase::supportsFormatCombination(
    int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbIn, int32_t nbOut) noexcept
{
    if (pos < 0 || pos >= nbIn + nbOut || inOut[pos].desc.format != TensorFormat::kLINEAR)
    {
        return false;
    }
    DataType const t = inOut[pos].desc.type;
    if (!isActivation(pos))
    {
        return t == DataType::kFLOAT;
    }
    if (pos == 0)
    {
        return toZooDType(t) >= 0;
    }
    return t == inOut[0].desc.type; // position 0 is an activation in every op
}

PluginFieldCollection const* ZooScanPluginBase::getFieldsToSerialize() noexcept
{
    mFieldStore.clear();
    for (auto const& f : intFields())
    {
        mFieldStore.emplace_back(f.first, f.second, PluginFieldType::kINT32, 1);
    }
    mFC.nbFields = static_cast<int32_t>(mFieldStore.size());
    mFC.fields = mFieldStore.empty() ? nullptr : mFieldStore.data();
    return &mFC;
}

ZooScanCreatorBase::ZooScanCreatorBase(char const* opType, char const* const* fieldNames, int32_t nbFields) noexcept
    : mOpType(opType)
{
    for (int32_t i = 0; i < nbFields; ++i)
    {
        mFields.emplace_back(fieldNames[i], nullptr, PluginFieldType::kINT32, 1);
    }
    mFC.nbFields = static_cast<int32_t>(mFields.size());
    mFC.fields = mFields.empty() ? nullptr : mFields.data();
}

} // namespace plugin
} // namespace zoo
