/*
 * Shared IPluginV3 machinery of the zoo scan plugins (SelectiveScan, SSDScan, LRUScan).
 *
 * Every constant that must match the ONNX graph (plugin name, version, namespace, field names, I/O positions) comes
 * from the generated header zooPluginSpec.h (plugins/gen_spec_header.py <- export/plugin_spec.py).
 *
 * Type rules (TensorRT >= 10 strongly typed networks: the types come from the ONNX graph):
 *   - "activation" tensors (sequence inputs/outputs) are fp32, fp16 or bf16, all the same type within one node;
 *   - parameters (A, D, biases, lambda) and states (h0, h) are fp32.
 * Format: linear only. Workspace: none. Aliasing: state outputs may alias the state input (IPluginV3OneBuildV2).
 */
#pragma once

#include "NvInferRuntime.h"
#include "zooPluginSpec.h"
#include "zooScanKernels.h"

#include <cstdint>
#include <string>
#include <vector>

namespace zoo
{
namespace plugin
{

//! Log through TensorRT's logger when setLoggerFinder gave us one, else to stderr.
void logError(char const* msg) noexcept;
void logVerbose(char const* msg) noexcept;
void setLoggerFinder(nvinfer1::ILoggerFinder* finder) noexcept;

//! TensorRT data type -> ZooDType, -1 if unsupported.
int32_t toZooDType(nvinfer1::DataType t) noexcept;

//! Reads an integer plugin field (kINT32 / kINT64 / kINT8 / kINT16); returns false if absent.
bool readIntField(nvinfer1::PluginFieldCollection const* fc, char const* name, int32_t& value) noexcept;

class ZooScanPluginBase : public nvinfer1::IPluginV3,
                          public nvinfer1::IPluginV3OneCore,
                          public nvinfer1::IPluginV3OneBuildV2,
                          public nvinfer1::IPluginV3OneRuntime
{
public:
    explicit ZooScanPluginBase(std::string layerName) noexcept
        : mLayerName(std::move(layerName))
    {
    }
    ~ZooScanPluginBase() override = default;

    // IPluginV3
    nvinfer1::IPluginCapability* getCapabilityInterface(nvinfer1::PluginCapabilityType type) noexcept override;

    // IPluginV3OneCore
    char const* getPluginVersion() const noexcept override
    {
        return zoo_spec::kPluginVersion;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return zoo_spec::kPluginNamespace;
    }

    // IPluginV3OneBuild
    int32_t configurePlugin(nvinfer1::DynamicPluginTensorDesc const* in, int32_t nbInputs,
        nvinfer1::DynamicPluginTensorDesc const* out, int32_t nbOutputs) noexcept override;
    int32_t getOutputDataTypes(nvinfer1::DataType* outputTypes, int32_t nbOutputs,
        nvinfer1::DataType const* inputTypes, int32_t nbInputs) const noexcept override;
    bool supportsFormatCombination(int32_t pos, nvinfer1::DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
        int32_t nbOutputs) noexcept override;
    size_t getWorkspaceSize(nvinfer1::DynamicPluginTensorDesc const*, int32_t, nvinfer1::DynamicPluginTensorDesc const*,
        int32_t) const noexcept override
    {
        return 0;
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(nvinfer1::PluginTensorDesc const* in, int32_t nbInputs, nvinfer1::PluginTensorDesc const*,
        int32_t) noexcept override;
    nvinfer1::IPluginV3* attachToContext(nvinfer1::IPluginResourceContext*) noexcept override
    {
        return clone();
    }
    nvinfer1::PluginFieldCollection const* getFieldsToSerialize() noexcept override;

protected:
    //! Number of inputs (from the spec).
    virtual int32_t nbInputs() const noexcept = 0;
    //! True when I/O position `pos` (inputs first, then outputs) is an activation tensor.
    virtual bool isActivation(int32_t pos) const noexcept = 0;
    //! Constraints of the kernel on the input dims (inputs in spec order; -1 = a dim not known yet) that the shape
    //! expressions cannot state, e.g. the state size N <= zoo_scan_max_state() or the steps T >= 1: the message of the
    //! first one `dims` breaks, else nullptr. Checked by configurePlugin on the profile's largest and smallest dims
    //! (engine build: such an engine fails to build, instead of failing its enqueues) and onShapeChange.
    virtual char const* shapeError(nvinfer1::Dims const* dims, int32_t nbInputs) const noexcept
    {
        return nullptr;
    }
    //! The op's integer fields (name, value) in spec order; filled into the serialized field collection.
    virtual std::vector<std::pair<char const*, int32_t*>> intFields() noexcept
    {
        return {};
    }

    std::string mLayerName;

private:
    std::vector<nvinfer1::PluginField> mFieldStore;
    nvinfer1::PluginFieldCollection mFC{};
};

//! Creator boilerplate: name from the op, version/namespace from the spec, field names from the spec.
class ZooScanCreatorBase : public nvinfer1::IPluginCreatorV3One
{
public:
    ZooScanCreatorBase(char const* opType, char const* const* fieldNames, int32_t nbFields) noexcept;
    char const* getPluginName() const noexcept override
    {
        return mOpType;
    }
    char const* getPluginVersion() const noexcept override
    {
        return zoo_spec::kPluginVersion;
    }
    char const* getPluginNamespace() const noexcept override
    {
        return zoo_spec::kPluginNamespace;
    }
    nvinfer1::PluginFieldCollection const* getFieldNames() noexcept override
    {
        return &mFC;
    }

private:
    char const* mOpType;
    std::vector<nvinfer1::PluginField> mFields;
    nvinfer1::PluginFieldCollection mFC{};
};

//! The creators of this library (defined in common/zooPlugins.cpp).
nvinfer1::IPluginCreatorV3One* selectiveScanCreator() noexcept;
nvinfer1::IPluginCreatorV3One* ssdScanCreator() noexcept;
nvinfer1::IPluginCreatorV3One* lruScanCreator() noexcept;

} // namespace plugin
} // namespace zoo
