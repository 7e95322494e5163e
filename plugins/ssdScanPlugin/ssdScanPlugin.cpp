#include "ssdScanPlugin.h"

#include <new>

using namespace nvinfer1;
namespace S = zoo_spec::SSDScan;

static_assert(S::kIsActivation[0], "ZooScanPluginBase expects an activation at I/O position 0");

namespace zoo
{
namespace plugin
{

SsdScanPlugin::SsdScanPlugin(std::string const& layerName, int32_t dtSoftplus) noexcept
    : ZooScanPluginBase(layerName)
    , mDtSoftplus(dtSoftplus)
{
}

IPluginV3* SsdScanPlugin::clone() noexcept
{
    return new (std::nothrow) SsdScanPlugin(mLayerName, mDtSoftplus);
}

bool SsdScanPlugin::isActivation(int32_t pos) const noexcept
{
    return pos >= 0 && pos < S::kNbInputs + S::kNbOutputs && S::kIsActivation[pos];
}

int32_t SsdScanPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (nbInputs != S::kNbInputs || nbOutputs != S::kNbOutputs)
    {
        return -1;
    }
    outputs[S::kOut_y] = inputs[S::kIn_x];  // [B, T, H, P]
    outputs[S::kOut_h] = inputs[S::kIn_h0]; // [B, H, P, N]
    return 0;
}

int32_t SsdScanPlugin::getAliasedInput(int32_t outputIndex) noexcept
{
    return outputIndex == S::kAliasedOutput ? S::kAliasedInput : -1;
}

int32_t SsdScanPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs,
    void* const* outputs, void*, cudaStream_t stream) noexcept
{
    Dims const& dx = inputDesc[S::kIn_x].dims;  // B, T, H, P
    Dims const& dB = inputDesc[S::kIn_B].dims;  // B, T, G, N
    if (dx.nbDims != 4 || dB.nbDims != 4)
    {
        logError("SSDScan: x must be [B,T,H,P] and B [B,T,G,N]");
        return -1;
    }
    int32_t const rc = zoo_ssd_scan(toZooDType(inputDesc[S::kIn_x].type), inputs[S::kIn_x], inputs[S::kIn_dt],
        static_cast<float const*>(inputs[S::kIn_A]), inputs[S::kIn_B], inputs[S::kIn_C],
        static_cast<float const*>(inputs[S::kIn_D]), static_cast<float const*>(inputs[S::kIn_dt_bias]),
        static_cast<float const*>(inputs[S::kIn_h0]), outputs[S::kOut_y], static_cast<float*>(outputs[S::kOut_h]),
        static_cast<int32_t>(dx.d[0]), static_cast<int32_t>(dx.d[1]), static_cast<int32_t>(dx.d[2]),
        static_cast<int32_t>(dx.d[3]), static_cast<int32_t>(dB.d[2]), static_cast<int32_t>(dB.d[3]), mDtSoftplus,
        stream);
    if (rc != 0)
    {
        logError("SSDScan: kernel launch failed (T < 1, N > zoo_scan_max_state(), H % G != 0 or a CUDA error)");
        return -1;
    }
    return 0;
}

char const* SsdScanPlugin::shapeError(Dims const* dims, int32_t nbInputs) const noexcept
{
    if (nbInputs != S::kNbInputs)
    {
        return nullptr;
    }
    Dims const& dB = dims[S::kIn_B]; // [B, T, G, N]
    Dims const& dx = dims[S::kIn_x]; // [B, T, H, P]
    if (dx.nbDims == 4 && dx.d[1] >= 0 && dx.d[1] < 1)
    {
        return "SSDScan: the steps T (x's dim 1) must be >= 1: a scan over no step would leave the state output h "
               "unwritten";
    }
    if (dB.nbDims == 4 && dB.d[3] >= 0 && (dB.d[3] < 1 || dB.d[3] > zoo_scan_max_state()))
    {
        return "SSDScan: the state size N (B's dim 3) must be in 1..zoo_scan_max_state() (256): the kernel cannot run "
               "this layer";
    }
    if (dB.nbDims == 4 && dx.nbDims == 4 && dB.d[2] >= 0 && dx.d[2] >= 0 && (dB.d[2] < 1 || dx.d[2] % dB.d[2] != 0))
    {
        return "SSDScan: the heads H (x's dim 2) must be a multiple of the groups G (B's dim 2): the kernel cannot run "
               "this layer";
    }
    return nullptr;
}

SsdScanPluginCreator::SsdScanPluginCreator() noexcept
    : ZooScanCreatorBase(S::kOpType, S::kFieldNames, S::kNbFields)
{
}

IPluginV3* SsdScanPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    int32_t dtSoftplus = S::kDefault_dt_softplus;
    readIntField(fc, S::kField_dt_softplus, dtSoftplus);
    return new (std::nothrow) SsdScanPlugin(name != nullptr ? name : "", dtSoftplus);
}

IPluginCreatorV3One* ssdScanCreator() noexcept
{
    static SsdScanPluginCreator creator;
    return &creator;
}

} // namespace plugin
} // namespace zoo
