#include "selectiveScanPlugin.h"

#include <new>

using namespace nvinfer1;
namespace S = zoo_spec::SelectiveScan;

static_assert(S::kIsActivation[0], "ZooScanPluginBase expects an activation at I/O position 0");

namespace zoo
{
namespace plugin
{

SelectiveScanPlugin::SelectiveScanPlugin(std::string const& layerName, int32_t deltaSoftplus) noexcept
    : ZooScanPluginBase(layerName)
    , mDeltaSoftplus(deltaSoftplus)
{
}

IPluginV3* SelectiveScanPlugin::clone() noexcept
{
    return new (std::nothrow) SelectiveScanPlugin(mLayerName, mDeltaSoftplus);
}

bool SelectiveScanPlugin::isActivation(int32_t pos) const noexcept
{
    return pos >= 0 && pos < S::kNbInputs + S::kNbOutputs && S::kIsActivation[pos];
}

int32_t SelectiveScanPlugin::getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t,
    DimsExprs* outputs, int32_t nbOutputs, IExprBuilder&) noexcept
{
    if (nbInputs != S::kNbInputs || nbOutputs != S::kNbOutputs)
    {
        return -1;
    }
    outputs[S::kOut_y] = inputs[S::kIn_u];  // [B, E, T]
    outputs[S::kOut_h] = inputs[S::kIn_h0]; // [B, E, N]
    return 0;
}

int32_t SelectiveScanPlugin::getAliasedInput(int32_t outputIndex) noexcept
{
    return outputIndex == S::kAliasedOutput ? S::kAliasedInput : -1; // state updated in place
}

int32_t SelectiveScanPlugin::enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*,
    void const* const* inputs, void* const* outputs, void*, cudaStream_t stream) noexcept
{
    Dims const& du = inputDesc[S::kIn_u].dims;
    Dims const& dA = inputDesc[S::kIn_A].dims;
    if (du.nbDims != 3 || dA.nbDims != 2)
    {
        logError("SelectiveScan: u must be [B,E,T] and A [E,N]");
        return -1;
    }
    int32_t const dtype = toZooDType(inputDesc[S::kIn_u].type);
    int32_t const rc = zoo_selective_scan(dtype, inputs[S::kIn_u], inputs[S::kIn_delta],
        static_cast<float const*>(inputs[S::kIn_A]), inputs[S::kIn_B], inputs[S::kIn_C],
        static_cast<float const*>(inputs[S::kIn_D]), inputs[S::kIn_z], static_cast<float const*>(inputs[S::kIn_delta_bias]),
        static_cast<float const*>(inputs[S::kIn_h0]), outputs[S::kOut_y], static_cast<float*>(outputs[S::kOut_h]),
        static_cast<int32_t>(du.d[0]), static_cast<int32_t>(du.d[1]), static_cast<int32_t>(dA.d[1]),
        static_cast<int32_t>(du.d[2]), mDeltaSoftplus, stream);
    if (rc != 0)
    {
        logError("SelectiveScan: kernel launch failed (T < 1, N > zoo_scan_max_state() or a CUDA error)");
        return -1;
    }
    return 0;
}

char const* SelectiveScanPlugin::shapeError(Dims const* dims, int32_t nbInputs) const noexcept
{
    if (nbInputs != S::kNbInputs)
    {
        return nullptr;
    }
    Dims const& du = dims[S::kIn_u]; // [B, E, T]
    if (du.nbDims == 3 && du.d[2] >= 0 && du.d[2] < 1)
    {
        return "SelectiveScan: the steps T (u's dim 2) must be >= 1: a scan over no step would leave the state output "
               "h unwritten";
    }
    Dims const& dA = dims[S::kIn_A]; // [E, N]: N is the state size the kernel keeps in registers
    if (dA.nbDims == 2 && dA.d[1] >= 0 && (dA.d[1] < 1 || dA.d[1] > zoo_scan_max_state()))
    {
        return "SelectiveScan: the state size N (A's dim 1) must be in 1..zoo_scan_max_state() (256): the kernel "
               "cannot run this layer";
    }
    return nullptr;
}

SelectiveScanPluginCreator::SelectiveScanPluginCreator() noexcept
    : ZooScanCreatorBase(S::kOpType, S::kFieldNames, S::kNbFields)
{
}

IPluginV3* SelectiveScanPluginCreator::createPlugin(char const* name, PluginFieldCollection const* fc, TensorRTPhase) noexcept
{
    int32_t deltaSoftplus = S::kDefault_delta_softplus;
    readIntField(fc, S::kField_delta_softplus, deltaSoftplus);
    return new (std::nothrow) SelectiveScanPlugin(name != nullptr ? name : "", deltaSoftplus);
}

IPluginCreatorV3One* selectiveScanCreator() noexcept
{
    static SelectiveScanPluginCreator creator;
    return &creator;
}

} // namespace plugin
} // namespace zoo
