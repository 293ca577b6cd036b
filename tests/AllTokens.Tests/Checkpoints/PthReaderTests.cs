using System.IO.Compression;
using AllTokens.Checkpoints;

namespace AllTokens.Tests.Checkpoints;

public sealed class PthReaderTests : IDisposable
{
    private const string PwnedMarker = "/tmp/alltokens_pwned";
    private readonly TestFiles _files = new();

    public void Dispose() => _files.Dispose();

    [Fact]
    public void ZipStateDictLoadsExactValuesShapesAndOrder()
    {
        var sd = PthReader.ReadStateDict(TestFiles.Fixture("state_zip.pth"));
        TestFiles.AssertMatches(TestFiles.Expected("state"), sd);
    }

    [Fact]
    public void LegacyStateDictLoadsExactValues()
    {
        var sd = PthReader.ReadStateDict(TestFiles.Fixture("state_legacy.pth"));
        TestFiles.AssertMatches(TestFiles.Expected("state"), sd);
    }

    [Fact]
    public void LegacyEqualsZip()
    {
        var zip = PthReader.ReadStateDict(TestFiles.Fixture("state_zip.pth"));
        var legacy = PthReader.ReadStateDict(TestFiles.Fixture("state_legacy.pth"));
        Assert.Equal(zip.Select(p => p.Key), legacy.Select(p => p.Key));
        for (var i = 0; i < zip.Count; i++)
        {
            Assert.Equal(zip[i].Value.DType, legacy[i].Value.DType);
            Assert.Equal(zip[i].Value.Shape, legacy[i].Value.Shape);
            Assert.Equal(zip[i].Value.Data, legacy[i].Value.Data);
        }
    }

    [Fact]
    public void SharedStorageViewsAreIndependentCopies()
    {
        var sd = PthReader.ReadStateDict(TestFiles.Fixture("state_zip.pth")).ToDictionary(p => p.Key, p => p.Value);
        Assert.NotSame(sd["shared_a"].Data, sd["shared_b"].Data);
        Assert.Equal([0.5, 0.75, 1.0, 1.25, 1.5, 1.75], TestFiles.Values(sd["shared_a"]).Cast<double>());
        Assert.Equal([2.5, 3.25, 4.0], TestFiles.Values(sd["shared_b"]).Cast<double>());
        Assert.Empty(sd["bn.num_batches_tracked"].Shape);
        Assert.Equal(7L, TestFiles.Values(sd["bn.num_batches_tracked"]).Single());
    }

    [Theory]
    [InlineData("container.pth")]
    [InlineData("container_legacy.pth")]
    public void ContainerYieldsStateDictWithModulePrefixStripped(string file)
    {
        var sd = PthReader.ReadStateDict(TestFiles.Fixture(file));
        TestFiles.AssertMatches(TestFiles.Expected("model"), sd);
    }

    [Theory]
    [InlineData("container.pth")]
    [InlineData("container_legacy.pth")]
    public void ContainerObjectGraphHoldsInertValues(string file)
    {
        var root = Assert.IsType<PickleDict>(PthReader.ReadObject(TestFiles.Fixture(file)));
        Assert.Equal(["state_dict", "epoch", "args", "optimizer", "best_acc", "device", "dtype"], root.Keys.Cast<string>());
        Assert.Equal(3L, root["epoch"]);

        var state = Assert.IsType<PickleDict>(root["state_dict"]);
        Assert.IsType<PickleDict>(state.State); // OrderedDict's _metadata attribute, via BUILD
        Assert.StartsWith("module.", Assert.IsType<string>(state.Keys.First()));

        var args = Assert.IsType<PickleObject>(root["args"]);
        Assert.Equal("argparse.Namespace", args.RootGlobal!.FullName);
        Assert.True(args.RootGlobal.IsAllowlisted);
        Assert.Equal(0.1, args.GetAttribute("lr"));
        Assert.Equal("tiny", args.GetAttribute("arch"));
        var tags = Assert.IsType<HashSet<object?>>(args.GetAttribute("tags"));
        Assert.True(tags.SetEquals(["a", "b"]));
        Assert.Equal(new byte[] { 0, 0xff, (byte)'r', (byte)'a', (byte)'w' }, args.GetAttribute("blob"));

        var optimizer = Assert.IsType<PickleDict>(root["optimizer"]);
        var momentum = Assert.IsType<PickleDict>(Assert.IsType<PickleDict>(optimizer["state"])[0L]);
        Assert.Equal([0.5, 0.25], TestFiles.Values(Assert.IsType<RawTensor>(momentum["momentum_buffer"])).Cast<double>());
        var group = Assert.IsType<PickleDict>(Assert.IsType<List<object?>>(optimizer["param_groups"]).Single());
        Assert.Equal(false, group["nesterov"]);
        Assert.Equal([0L, 1L], Assert.IsType<List<object?>>(group["params"]));

        Assert.Equal("numpy.core.multiarray.scalar", Assert.IsType<PickleObject>(root["best_acc"]).RootGlobal!.FullName);
        Assert.Equal("torch.device", Assert.IsType<PickleObject>(root["device"]).RootGlobal!.FullName);
        Assert.Equal(new TorchDType("float16", TensorDType.Float16), root["dtype"]);
    }

    [Fact]
    public void EmaIsUsedOnlyWhenPreferredOrAlone()
    {
        var file = TestFiles.Fixture("container_ema.pth");
        TestFiles.AssertMatches(TestFiles.Expected("model"), PthReader.ReadStateDict(file));
        TestFiles.AssertMatches(TestFiles.Expected("model_ema"), PthReader.ReadStateDict(file, preferEma: true));
        TestFiles.AssertMatches(TestFiles.Expected("model_ema"), PthReader.ReadStateDict(TestFiles.Fixture("ema_only.pth")));
        TestFiles.AssertMatches(TestFiles.Expected("model_ema"), PthReader.ReadStateDict(TestFiles.Fixture("ema_only.pth"), preferEma: true));
        // preferEma on a checkpoint without EMA falls back to the regular weights.
        TestFiles.AssertMatches(TestFiles.Expected("model"), PthReader.ReadStateDict(TestFiles.Fixture("container.pth"), preferEma: true));
    }

    [Fact]
    public void MaliciousPickleIsNeverExecuted()
    {
        File.Delete(PwnedMarker);
        var path = TestFiles.Fixture("malicious.pth");

        var root = Assert.IsType<PickleObject>(PthReader.ReadObject(path));
        Assert.Equal("posix.system", root.RootGlobal!.FullName);
        Assert.False(root.RootGlobal.IsAllowlisted);
        Assert.Equal("echo pwned > /tmp/alltokens_pwned", Assert.Single(root.Args));

        var e = Assert.Throws<CheckpointFormatException>(() => PthReader.ReadStateDict(path));
        Assert.Contains(path, e.Message);
        Assert.Contains("posix.system", e.Message);
        Assert.Contains("no state dict", e.Message);
        Assert.Throws<CheckpointFormatException>(() => StateDicts.ReadAny(path));
        Assert.False(File.Exists(PwnedMarker), "the payload ran");
    }

    [Fact]
    public void MaliciousEntriesInAStateDictAreInertAndSkipped()
    {
        File.Delete(PwnedMarker);
        var path = TestFiles.Fixture("malicious_mixed.pth");
        var sd = PthReader.ReadStateDict(path);
        var (name, weight) = Assert.Single(sd);
        Assert.Equal("weight", name);
        Assert.Equal([1.0, 2.0], TestFiles.Values(weight).Cast<double>());

        var root = Assert.IsType<PickleDict>(PthReader.ReadObject(path));
        // Protocol 2 writes Python 2 module names: builtins.eval is pickled as __builtin__.eval.
        var payload = Assert.IsType<PickleObject>(root["payload"]).RootGlobal!;
        Assert.Equal("__builtin__.eval", payload.FullName);
        Assert.False(payload.IsAllowlisted);
        Assert.Equal("posix.system", Assert.IsType<PickleObject>(root["other"]).RootGlobal!.FullName);
        Assert.False(File.Exists(PwnedMarker), "the payload ran");
    }

    [Fact]
    public void TruncatedZipIsAClearError()
    {
        var bytes = File.ReadAllBytes(TestFiles.Fixture("state_zip.pth"));
        var path = _files.Temp("truncated.pth");
        File.WriteAllBytes(path, bytes[..(bytes.Length / 2)]);
        var e = Assert.Throws<CheckpointFormatException>(() => PthReader.ReadStateDict(path));
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Theory]
    [InlineData(100)]
    [InlineData(1000)]
    [InlineData(2000)]
    [InlineData(2480)]
    public void TruncatedLegacyFileIsAClearError(int keep)
    {
        var bytes = File.ReadAllBytes(TestFiles.Fixture("state_legacy.pth"));
        var path = _files.Temp("truncated_legacy.pth");
        File.WriteAllBytes(path, bytes[..keep]);
        var e = Assert.Throws<CheckpointFormatException>(() => PthReader.ReadStateDict(path));
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains("truncated", e.Message);
    }

    [Fact]
    public void RandomBytesAreAClearError()
    {
        var path = _files.Temp("random.pth");
        var rng = new Random(1234);
        var bytes = new byte[4096];
        rng.NextBytes(bytes);
        bytes[0] = 0x17; // not PK, not a pickle, not a plausible safetensors header
        File.WriteAllBytes(path, bytes);
        var e = Assert.Throws<CheckpointFormatException>(() => PthReader.ReadStateDict(path));
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains("not a PyTorch checkpoint", e.Message);
        var any = Assert.Throws<CheckpointFormatException>(() => StateDicts.ReadAny(path));
        Assert.StartsWith(path + ": ", any.Message);
    }

    [Fact]
    public void EmptyFileIsAClearError()
    {
        var path = _files.Temp("empty.pth");
        File.WriteAllBytes(path, []);
        var e = Assert.Throws<CheckpointFormatException>(() => StateDicts.ReadAny(path));
        Assert.Contains("empty", e.Message);
        Assert.StartsWith(path + ": ", e.Message);
    }

    [Fact]
    public void MissingStorageEntryIsAClearError()
    {
        var path = _files.CopyFixture("state_zip.pth");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
            zip.GetEntry("state_zip/data/3")!.Delete();
        var e = Assert.Throws<CheckpointFormatException>(() => PthReader.ReadStateDict(path));
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains("state_zip/data/3", e.Message);
        Assert.Contains("missing", e.Message);
    }

    [Fact]
    public void ZipWithoutDataPklIsAClearError()
    {
        var path = _files.Temp("other.zip");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Create))
        {
            using var s = zip.CreateEntry("readme.txt").Open();
            s.Write("hello"u8);
        }
        var e = Assert.Throws<CheckpointFormatException>(() => PthReader.ReadObject(path));
        Assert.StartsWith(path + ": ", e.Message);
        Assert.Contains("data.pkl", e.Message);
    }

    [Fact]
    public void ReadAnyRecognisesEveryFormatByContent()
    {
        var expected = TestFiles.Expected("state");
        TestFiles.AssertMatches(expected, StateDicts.ReadAny(TestFiles.Fixture("state_zip.pth")));
        TestFiles.AssertMatches(expected, StateDicts.ReadAny(TestFiles.Fixture("state_legacy.pth")));

        var st = _files.Temp("weights.bin"); // extension deliberately unhelpful
        Safetensors.Write(st, PthReader.ReadStateDict(TestFiles.Fixture("state_zip.pth")));
        TestFiles.AssertMatches(expected, StateDicts.ReadAny(st));

        var prefixed = _files.Temp("prefixed.safetensors");
        Safetensors.Write(prefixed, [new("module.w", new RawTensor(TensorDType.UInt8, [1], [9]))]);
        Assert.Equal("w", Assert.Single(StateDicts.ReadAny(prefixed)).Key);
    }

    [Fact]
    public void SafetensorsFileGivenToPthReaderIsAClearError()
    {
        var st = _files.Temp("x.safetensors");
        Safetensors.Write(st, [new("w", new RawTensor(TensorDType.UInt8, [1], [9]))]);
        var e = Assert.Throws<CheckpointFormatException>(() => PthReader.ReadObject(st));
        Assert.Contains("safetensors", e.Message);
    }

    [Theory]
    [InlineData("little", true)]
    [InlineData("little\n", true)]
    [InlineData("big", false)]
    public void ByteOrderRecordIsHonoured(string order, bool ok)
    {
        // torch >= 2.1 writes <prefix>/byteorder; torch 1.13 (our fixtures) does not.
        var path = _files.CopyFixture("state_zip.pth");
        using (var zip = ZipFile.Open(path, ZipArchiveMode.Update))
        {
            using var s = zip.CreateEntry("state_zip/byteorder", CompressionLevel.NoCompression).Open();
            s.Write(System.Text.Encoding.ASCII.GetBytes(order));
        }
        if (ok)
        {
            TestFiles.AssertMatches(TestFiles.Expected("state"), PthReader.ReadStateDict(path));
        }
        else
        {
            var e = Assert.Throws<CheckpointFormatException>(() => PthReader.ReadStateDict(path));
            Assert.StartsWith(path + ": ", e.Message);
            Assert.Contains("'big'", e.Message);
        }
    }
}
