/*
 * LRUScan (LRURec) TensorRT plugin, IPluginV3 + IPluginCreatorV3One.
 * I/O, versions and fields: see README.md beside this file and export/plugin_spec.py (LRU_SCAN).
 */
#pragma once

#include "zooScanPluginBase.h"

namespace zoo
{
namespace plugin
{

class LruScanPlugin : public ZooScanPluginBase
{
public:
    explicit LruScanPlugin(std::string const& layerName) noexcept;

    nvinfer1::IPluginV3* clone() noexcept override;
    char const* getPluginName() const noexcept override
    {
        return zoo_spec::LRUScan::kOpType;
    }
    int32_t getNbOutputs() const noexcept override
    {
        return zoo_spec::LRUScan::kNbOutputs;
    }
    int32_t getOutputShapes(nvinfer1::DimsExprs const* inputs, int32_t nbInputs, nvinfer1::DimsExprs const* shapeInputs,
        int32_t nbShapeInputs, nvinfer1::DimsExprs* outputs, int32_t nbOutputs,
        nvinfer1::IExprBuilder& exprBuilder) noexcept override;
    int32_t enqueue(nvinfer1::PluginTensorDesc const* inputDesc, nvinfer1::PluginTensorDesc const* outputDesc,
        void const* const* inputs, void* const* outputs, void* workspace, cudaStream_t stream) noexcept override;

protected:
    int32_t nbInputs() const noexcept override
    {
        return zoo_spec::LRUScan::kNbInputs;
    }
    char const* shapeError(nvinfer1::Dims const* dims, int32_t nbInputs) const noexcept override;
    bool isActivation(int32_t pos) const noexcept override;
};

class LruScanPluginCreator : public ZooScanCreatorBase
{
public:
    LruScanPluginCreator() noexcept;
    nvinfer1::IPluginV3* createPlugin(
        char const* name, nvinfer1::PluginFieldCollection const* fc, nvinfer1::TensorRTPhase phase) noexcept override;
};

} // namespace plugin
} // namespace zoo
