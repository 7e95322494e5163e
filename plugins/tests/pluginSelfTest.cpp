/*
 * zoo_plugin_selftest LIB: loads libzoo_trt_plugins.so with dlopen (no TensorRT library needed), calls getCreators
 * and checks, for every creator, the C++ behaviour the Python bindings cannot reach on a C++ plugin:
 *   name/version/namespace/fields == zooPluginSpec.h (i.e. export/plugin_spec.py), capability interfaces and their
 *   versions, getNbOutputs, getOutputDataTypes (fp32/fp16/bf16 activations, fp32 states), supportsFormatCombination,
 *   getOutputShapes (pass-through of the right inputs), getAliasedInput (state in place), field serialization round
 *   trip (build phase -> getFieldsToSerialize -> createPlugin(kRUNTIME)), clone, attachToContext.
 * Prints one line per check ("ok ..." / "FAIL ...") and "N passed, M failed"; exit code = number of failures (max 100).
 * No CUDA call is made (enqueue runs on a GPU in the engine tests, and on the CPU against the emulated kernels in
 * tests/test_cuda_emu.py).
 */
#include "NvInferRuntime.h"
#include "zooPluginSpec.h"

#include <cstdio>
#include <cstring>
#include <dlfcn.h>
#include <string>
#include <vector>

using namespace nvinfer1;

static int gPass = 0;
static int gFail = 0;
static void check(bool cond, std::string const& what)
{
    std::printf("%s %s\n", cond ? "ok  " : "FAIL", what.c_str());
    (cond ? gPass : gFail)++;
}

struct OpInfo
{
    char const* name;
    int32_t nbIn;
    int32_t nbOut;
    char const* const* fields;
    int32_t nbFields;
    std::vector<int32_t> actPositions;        // I/O positions (inputs then outputs) with the activation dtype
    std::vector<std::pair<int32_t, int32_t>> shapeOf; // output i has the shape of input j
    int32_t aliasOut;                          // output aliased to an input (-1: none)
    int32_t aliasIn;
};

static DynamicPluginTensorDesc desc(DataType t, TensorFormat f = TensorFormat::kLINEAR)
{
    DynamicPluginTensorDesc d{};
    d.desc.type = t;
    d.desc.format = f;
    return d;
}

int main(int argc, char** argv)
{
    if (argc < 2)
    {
        std::fprintf(stderr, "usage: %s libzoo_trt_plugins.so\n", argv[0]);
        return 2;
    }
    void* h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (h == nullptr)
    {
        std::fprintf(stderr, "dlopen failed: %s\n", dlerror());
        return 2;
    }
    using GetCreators = IPluginCreatorInterface* const* (*) (int32_t&);
    auto getCreators = reinterpret_cast<GetCreators>(dlsym(h, "getCreators"));
    check(getCreators != nullptr, "getCreators exported");
    check(dlsym(h, "setLoggerFinder") != nullptr, "setLoggerFinder exported");
    if (getCreators == nullptr)
    {
        return 1;
    }
    namespace SS = zoo_spec::SelectiveScan;
    namespace SD = zoo_spec::SSDScan;
    namespace LR = zoo_spec::LRUScan;
    std::vector<OpInfo> ops = {
        {SS::kOpType, SS::kNbInputs, SS::kNbOutputs, SS::kFieldNames, SS::kNbFields,
            {SS::kIn_u, SS::kIn_delta, SS::kIn_B, SS::kIn_C, SS::kIn_z, SS::kNbInputs + SS::kOut_y},
            {{SS::kOut_y, SS::kIn_u}, {SS::kOut_h, SS::kIn_h0}}, SS::kOut_h, SS::kIn_h0},
        {SD::kOpType, SD::kNbInputs, SD::kNbOutputs, SD::kFieldNames, SD::kNbFields,
            {SD::kIn_x, SD::kIn_dt, SD::kIn_B, SD::kIn_C, SD::kNbInputs + SD::kOut_y},
            {{SD::kOut_y, SD::kIn_x}, {SD::kOut_h, SD::kIn_h0}}, SD::kOut_h, SD::kIn_h0},
        {LR::kOpType, LR::kNbInputs, LR::kNbOutputs, LR::kFieldNames, LR::kNbFields,
            {LR::kIn_u_re, LR::kIn_u_im, LR::kNbInputs + LR::kOut_h_re, LR::kNbInputs + LR::kOut_h_im},
            {{LR::kOut_h_re, LR::kIn_u_re}, {LR::kOut_h_im, LR::kIn_u_re}}, -1, -1},
    };
    int32_t n = 0;
    IPluginCreatorInterface* const* creators = getCreators(n);
    check(n == static_cast<int32_t>(ops.size()), "number of creators == number of spec ops");
    for (auto const& op : ops)
    {
        std::string const p = std::string(op.name) + ": ";
        IPluginCreatorV3One* c = nullptr;
        for (int32_t i = 0; i < n; ++i)
        {
            auto* ci = static_cast<IPluginCreatorV3One*>(creators[i]);
            if (std::strcmp(creators[i]->getInterfaceInfo().kind, "PLUGIN CREATOR_V3ONE") == 0
                && std::strcmp(ci->getPluginName(), op.name) == 0)
            {
                c = ci;
            }
        }
        check(c != nullptr, p + "creator found (IPluginCreatorV3One)");
        if (c == nullptr)
        {
            continue;
        }
        check(std::strcmp(c->getPluginVersion(), zoo_spec::kPluginVersion) == 0, p + "creator version");
        check(std::strcmp(c->getPluginNamespace(), zoo_spec::kPluginNamespace) == 0, p + "creator namespace");
        PluginFieldCollection const* fn = c->getFieldNames();
        bool fieldsOk = fn != nullptr && fn->nbFields == op.nbFields;
        for (int32_t i = 0; fieldsOk && i < op.nbFields; ++i)
        {
            fieldsOk = std::strcmp(fn->fields[i].name, op.fields[i]) == 0 && fn->fields[i].type == PluginFieldType::kINT32;
        }
        check(fieldsOk, p + "field names == spec attributes (kINT32)");

        // non-default field values (0) must survive build -> serialize -> runtime
        std::vector<int32_t> zeros(op.nbFields, 0);
        std::vector<PluginField> fv;
        for (int32_t i = 0; i < op.nbFields; ++i)
        {
            fv.emplace_back(op.fields[i], &zeros[i], PluginFieldType::kINT32, 1);
        }
        PluginFieldCollection fc{static_cast<int32_t>(fv.size()), fv.empty() ? nullptr : fv.data()};
        IPluginV3* pl = c->createPlugin("selftest", &fc, TensorRTPhase::kBUILD);
        check(pl != nullptr, p + "createPlugin(kBUILD)");
        if (pl == nullptr)
        {
            continue;
        }
        auto* core = static_cast<IPluginV3OneCore*>(pl->getCapabilityInterface(PluginCapabilityType::kCORE));
        auto* build = static_cast<IPluginV3OneBuildV2*>(pl->getCapabilityInterface(PluginCapabilityType::kBUILD));
        auto* rt = static_cast<IPluginV3OneRuntime*>(pl->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
        check(core && std::strcmp(core->getInterfaceInfo().kind, "PLUGIN_V3ONE_CORE") == 0, p + "CORE interface");
        check(build && std::strcmp(build->getInterfaceInfo().kind, "PLUGIN_V3ONE_BUILD") == 0
                && build->getInterfaceInfo().major == 2,
            p + "BUILD interface is IPluginV3OneBuildV2 (aliasing)");
        check(rt && std::strcmp(rt->getInterfaceInfo().kind, "PLUGIN_V3ONE_RUNTIME") == 0, p + "RUNTIME interface");
        if (!core || !build || !rt)
        {
            continue;
        }
        check(std::strcmp(core->getPluginName(), op.name) == 0 && std::strcmp(core->getPluginVersion(), zoo_spec::kPluginVersion) == 0
                && std::strcmp(core->getPluginNamespace(), zoo_spec::kPluginNamespace) == 0,
            p + "plugin name/version/namespace");
        check(build->getNbOutputs() == op.nbOut, p + "getNbOutputs == spec outputs");

        auto isAct = [&](int32_t pos) {
            for (int32_t a : op.actPositions)
            {
                if (a == pos)
                {
                    return true;
                }
            }
            return false;
        };
        for (DataType act : {DataType::kFLOAT, DataType::kHALF, DataType::kBF16})
        {
            std::vector<DataType> inT(op.nbIn), outT(op.nbOut, DataType::kINT8);
            for (int32_t i = 0; i < op.nbIn; ++i)
            {
                inT[i] = isAct(i) ? act : DataType::kFLOAT;
            }
            bool ok = build->getOutputDataTypes(outT.data(), op.nbOut, inT.data(), op.nbIn) == 0;
            for (int32_t o = 0; ok && o < op.nbOut; ++o)
            {
                ok = outT[o] == (isAct(op.nbIn + o) ? act : DataType::kFLOAT);
            }
            check(ok, p + "getOutputDataTypes act=" + std::to_string(static_cast<int>(act)));
            std::vector<DynamicPluginTensorDesc> io;
            for (int32_t i = 0; i < op.nbIn + op.nbOut; ++i)
            {
                io.push_back(desc(isAct(i) ? act : DataType::kFLOAT));
            }
            bool all = true;
            for (int32_t pos = 0; pos < op.nbIn + op.nbOut; ++pos)
            {
                all = all && build->supportsFormatCombination(pos, io.data(), op.nbIn, op.nbOut);
            }
            check(all, p + "supportsFormatCombination accepts act=" + std::to_string(static_cast<int>(act)));
            if (act != DataType::kFLOAT)
            {
                // a state/parameter in half precision, or a mixed activation dtype, must be refused
                bool refused = true;
                for (int32_t pos = 1; pos < op.nbIn + op.nbOut; ++pos)
                {
                    auto bad = io;
                    bad[pos].desc.type = isAct(pos) ? (act == DataType::kHALF ? DataType::kBF16 : DataType::kHALF) : act;
                    refused = refused && !build->supportsFormatCombination(pos, bad.data(), op.nbIn, op.nbOut);
                }
                check(refused, p + "supportsFormatCombination refuses half states / mixed activations");
            }
            auto chw = io;
            chw[0].desc.format = TensorFormat::kCHW32;
            check(!build->supportsFormatCombination(0, chw.data(), op.nbIn, op.nbOut), p + "refuses non-linear format");
        }
        check(!build->supportsFormatCombination(0, std::vector<DynamicPluginTensorDesc>(op.nbIn + op.nbOut, desc(DataType::kINT32)).data(), op.nbIn, op.nbOut),
            p + "refuses int32 activations");

        // shapes: outputs copy the right inputs' expressions (dummy, distinct pointers; never dereferenced)
        std::vector<DimsExprs> inE(op.nbIn), outE(op.nbOut);
        std::vector<char> tags(op.nbIn);
        for (int32_t i = 0; i < op.nbIn; ++i)
        {
            inE[i].nbDims = 1;
            inE[i].d[0] = reinterpret_cast<IDimensionExpr const*>(&tags[i]);
        }
        alignas(IExprBuilder) char ebStorage[sizeof(IExprBuilder)] = {};
        int32_t rc = build->getOutputShapes(inE.data(), op.nbIn, nullptr, 0, outE.data(), op.nbOut,
            *reinterpret_cast<IExprBuilder*>(ebStorage));
        bool shapesOk = rc == 0;
        for (auto const& so : op.shapeOf)
        {
            shapesOk = shapesOk && outE[so.first].nbDims == 1 && outE[so.first].d[0] == inE[so.second].d[0];
        }
        check(shapesOk, p + "getOutputShapes passes through the spec's shapes");
        bool aliasOk = true;
        for (int32_t o = 0; o < op.nbOut; ++o)
        {
            aliasOk = aliasOk && build->getAliasedInput(o) == (o == op.aliasOut ? op.aliasIn : -1);
        }
        check(aliasOk, p + "getAliasedInput: state output aliases the state input");
        check(build->getWorkspaceSize(nullptr, op.nbIn, nullptr, op.nbOut) == 0, p + "no workspace");

        PluginFieldCollection const* ser = rt->getFieldsToSerialize();
        bool serOk = ser != nullptr && ser->nbFields == op.nbFields;
        for (int32_t i = 0; serOk && i < op.nbFields; ++i)
        {
            serOk = std::strcmp(ser->fields[i].name, op.fields[i]) == 0 && ser->fields[i].type == PluginFieldType::kINT32
                && *static_cast<int32_t const*>(ser->fields[i].data) == 0;
        }
        check(serOk, p + "getFieldsToSerialize carries the non-default field values");
        IPluginV3* pr = c->createPlugin("selftest_rt", ser, TensorRTPhase::kRUNTIME);
        check(pr != nullptr, p + "createPlugin(kRUNTIME) from serialized fields");
        if (pr != nullptr)
        {
            auto* rt2 = static_cast<IPluginV3OneRuntime*>(pr->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            PluginFieldCollection const* ser2 = rt2->getFieldsToSerialize();
            bool same = ser2->nbFields == op.nbFields;
            for (int32_t i = 0; same && i < op.nbFields; ++i)
            {
                same = *static_cast<int32_t const*>(ser2->fields[i].data) == 0;
            }
            check(same, p + "serialization round trip");
            IPluginV3* attached = rt2->attachToContext(nullptr);
            check(attached != nullptr && attached != pr, p + "attachToContext clones");
            delete attached;
            delete pr;
        }
        IPluginV3* cl = pl->clone();
        check(cl != nullptr && cl != pl, p + "clone");
        delete cl;
        // defaults when the ONNX node carries no attribute
        IPluginV3* pd = c->createPlugin("selftest_default", nullptr, TensorRTPhase::kBUILD);
        if (pd != nullptr && op.nbFields > 0)
        {
            auto* rtd = static_cast<IPluginV3OneRuntime*>(pd->getCapabilityInterface(PluginCapabilityType::kRUNTIME));
            check(*static_cast<int32_t const*>(rtd->getFieldsToSerialize()->fields[0].data) == 1,
                p + "missing field -> spec default (1)");
        }
        delete pd;
        delete pl;
    }
    std::printf("%d passed, %d failed\n", gPass, gFail);
    return gFail > 100 ? 100 : gFail;
}
