using System.IO.Compression;
using AllTokens.Checkpoints;

namespace AllTokens.Tests.Checkpoints;

/// <summary>Corrupted files must fail with CheckpointFormatException (or load), never with anything else.</summary>
public sealed class FuzzTests : IDisposable
{
    private readonly TestFiles _files = new();

    public void Dispose() => _files.Dispose();

    public static int Iterations => int.TryParse(Environment.GetEnvironmentVariable("ALLTOKENS_FUZZ_ITERATIONS"), out var n) ? n : 150;

    [Theory]
    [InlineData("state_zip.pth")]
    [InlineData("state_legacy.pth")]
    [InlineData("container.pth")]
    [InlineData("container_legacy.pth")]
    [InlineData("malicious_mixed.pth")]
    [InlineData("safetensors")]
    public void MutatedFilesFailCleanly(string fixture)
    {
        byte[] original;
        if (fixture == "safetensors")
        {
            var st = _files.Temp("base.safetensors");
            Safetensors.Write(st, PthReader.ReadStateDict(TestFiles.Fixture("state_zip.pth")), new Dictionary<string, string> { ["a"] = "b" });
            original = File.ReadAllBytes(st);
        }
        else
        {
            original = File.ReadAllBytes(TestFiles.Fixture(fixture));
        }
        var rng = new Random(fixture.GetHashCode(StringComparison.Ordinal) ^ 12345);
        var path = _files.Temp("fuzz.bin");
        for (var iteration = 0; iteration < Iterations; iteration++)
        {
            var bytes = (byte[])original.Clone();
            switch (rng.Next(4))
            {
                case 0: // flip a few bytes
                    for (var k = rng.Next(1, 4); k > 0; k--) bytes[rng.Next(bytes.Length)] = (byte)rng.Next(256);
                    break;
                case 1: // truncate
                    bytes = bytes[..rng.Next(bytes.Length)];
                    break;
                case 2: // overwrite a run with one value (0x00/0xff/0x7f make lengths huge or zero)
                    {
                        var at = rng.Next(bytes.Length);
                        var value = (byte)(new[] { 0x00, 0xff, 0x7f, 0x80 })[rng.Next(4)];
                        for (var j = at; j < Math.Min(bytes.Length, at + rng.Next(1, 9)); j++) bytes[j] = value;
                        break;
                    }
                default: // flip bits in the first 64 bytes and the last 64 (headers, central directory)
                    {
                        var i = rng.Next(2) == 0 ? rng.Next(Math.Min(64, bytes.Length)) : Math.Max(0, bytes.Length - 1 - rng.Next(64));
                        bytes[i] ^= (byte)(1 << rng.Next(8));
                        break;
                    }
            }
            File.WriteAllBytes(path, bytes);
            try
            {
                StateDicts.ReadAny(path, preferEma: rng.Next(2) == 0);
            }
            catch (CheckpointFormatException e)
            {
                Assert.StartsWith(path + ": ", e.Message);
            }
            catch (Exception e)
            {
                Assert.Fail($"{fixture} mutation {iteration}: {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            }
        }
    }

    [Theory]
    [InlineData("state_zip.pth")]
    [InlineData("container.pth")]
    [InlineData("malicious_mixed.pth")]
    public void MutatedPicklesFailCleanly(string fixture)
    {
        byte[] original;
        using (var zip = ZipFile.OpenRead(TestFiles.Fixture(fixture)))
        {
            var entry = zip.Entries.Single(e => e.FullName.EndsWith("/data.pkl", StringComparison.Ordinal));
            using var s = entry.Open();
            using var ms = new MemoryStream();
            s.CopyTo(ms);
            original = ms.ToArray();
        }
        var rng = new Random(fixture.GetHashCode(StringComparison.Ordinal) ^ 777);
        for (var iteration = 0; iteration < Iterations * 4; iteration++)
        {
            var bytes = (byte[])original.Clone();
            for (var k = rng.Next(1, 4); k > 0; k--)
            {
                var i = rng.Next(bytes.Length);
                bytes[i] = rng.Next(3) switch { 0 => (byte)rng.Next(256), 1 => (byte)(bytes[i] ^ (1 << rng.Next(8))), _ => (byte)(bytes[i] + 1) };
            }
            var host = new TorchPickleHost((key, byteLength, es) =>
            {
                if (byteLength > 1 << 20) throw new PickleDataException("storage too large for the fuzz test");
                var d = new StorageData(key, byteLength, es);
                d.SetBytes(new byte[byteLength]);
                return d;
            });
            try
            {
                using var ms = new MemoryStream(bytes);
                var root = new Unpickler(ms, 0, bytes.Length, "fuzz.pth", "data.pkl", host).Load();
                StateDicts.ExtractStateDict(root, "fuzz.pth", preferEma: false);
            }
            catch (CheckpointFormatException e)
            {
                Assert.StartsWith("fuzz.pth: ", e.Message);
            }
            catch (Exception e)
            {
                Assert.Fail($"{fixture} mutation {iteration}: {e.GetType().Name}: {e.Message}\n{e.StackTrace}");
            }
        }
    }
}
