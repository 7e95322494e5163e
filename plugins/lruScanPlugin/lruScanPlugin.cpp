#include "lruScanPlugin.h"

#include <new>

using namespace nvinfer1;
namespace S = zoo_spec::LRUScan;

static_assert(S::kIsActivation[0], "ZooScanPluginBase expects an activation at I/O position 0");

namespace zoo
{
namespace plugin
{

LruScanPlugin::LruScanPlugin(std::string const& layerName) noexcept
    : ZooScanPluginBase(layerName)
{
}

IPluginV3* LruScanPlugin::clone() noexcept
{
    return new (std::nothrow) LruScanPlugin(mLayerName);
}

bool LruScanPlugin::isActivation(int32_t pos) const noexcept
{
    return pos >= 0 && pos < S::kNbInputs + S::kNbOutputs && S::kIsActivation[pos];
}

int32_t LruScanPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (nbInputs != S::kNbInputs || nbOutputs != S::kNbOutputs)
    {
        return -1;
    }
    outputs[S::kOut_h_re] = inputs[S::kIn_u_re]; // [B, T, N]
    outputs[S::kOut_h_im] = inputs[S::kIn_u_re];
    return 0;
}

int32_t LruScanPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
    void* const* outputs, void*, cudaStream_t stream) noexcept
{
    Dims const& du = inputDesc[S::kIn_u_re].dims; // B, T, N
    if (du.nbDims != 3)
    {
        logError("LRUScan: u_re must be [B,T,N]");
        return -1;
    }
    int32_t const rc = zoo_lru_scan(toZooDType(inputDesc[S::kIn_u_re].type), inputs[S::kIn_u_re], inputs[S::kIn_u_im],
        static_cast<float const*>(inputs[S::kIn_lam_re]), static_cast<float const*>(inputs[S::kIn_lam_im]),
        static_cast<float const*>(inputs[S::kIn_h0_re]), static_cast<float const*>(inputs[S::kIn_h0_im]),
        outputs[S::kOut_h_re], outputs[S::kOut_h_im], static_cast<int32_t>(du.d[0]), static_cast<int32_t>(du.d[1]),
        static_cast<int32_t>(du.d[2]), stream);
    if (rc != 0)
    {
        logError("LRUScan: kernel launch failed (T < 1 or a CUDA error)");
        return -1;
    }
    return 0;
}

char const* LruScanPlugin::shapeError(Dims const* dims, int32_t nbInputs) const noexcept
{
    if (nbInputs != S::kNbInputs)
    {
        return nullptr;
    }
    Dims const& du = dims[S::kIn_u_re]; // [B, T, N]
    if (du.nbDims == 3 && du.d[1] >= 0 && du.d[1] < 1)
    {
        return "LRUScan: the steps T (u_re's dim 1) must be >= 1: the carried state is the last step's row of h, and "
               "a scan over no step has none";
    }
    return nullptr;
}

LruScanPluginCreator::LruScanPluginCreator() noexcept
    : ZooScanCreatorBase(S::kOpType, S::kFieldNames, S::kNbFields)
{
}

IPluginV3* LruScanPluginCreator::createPlugin(char const* name, PluginFieldCollection const*, TensorRTPhase) noexcept
{
    return new (std::nothrow) LruScanPlugin(name != nullptr ? name : "");
}

IPluginCreatorV3One* lruScanCreator() noexcept
{
    static LruScanPluginCreator creator;
    return &creator;
}

} // namespace plugin
} // namespace zoo
