using System.Buffers.Binary;
using System.Diagnostics;
using System.IO.Compression;
using System.Text;
using AllTokens.Checkpoints;
using AllTokens.Models;
using AllTokens.Training;
using TorchSharp;

namespace AllTokens.Tests.Reliability;

/// <summary>
/// Hostile and broken inputs through the real CLI, one table: each must end in a clear error naming the file (or the
/// flag/key), or in a counted skip; never in a crash (signal, unhandled exception) or a hang (60 s limit each).
/// Malicious pickles must run nothing: their payload would create a marker file.
/// </summary>
public sealed class HostileInputTests : IDisposable
{
    private readonly string dir = Directory.CreateTempSubdirectory("alltokens-hostile-").FullName;

    public void Dispose() => Directory.Delete(dir, true);

    /// <summary>One input: what is given, the exit codes that count as handled, and what stderr must say.</summary>
    private sealed record Case(string Group, string Input, string[] Args, int[] Codes, params string[] Expect);

    private string Marker => Path.Combine(dir, "PWNED");

    private static string Fixture(string relative) => Path.Combine(AppContext.BaseDirectory, "fixtures", relative);

    private string Write(string name, byte[] bytes)
    {
        string path = Path.Combine(dir, name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        File.WriteAllBytes(path, bytes);
        return path;
    }

    private string WriteText(string name, string text) => Write(name, Encoding.UTF8.GetBytes(text));

    // ---------------------------------------------------------------- images

    private static uint Crc32(ReadOnlySpan<byte> data)
    {
        uint c = 0xFFFFFFFF;
        foreach (byte b in data)
        {
            c ^= b;
            for (int k = 0; k < 8; k++) c = (c & 1) != 0 ? 0xEDB88320 ^ (c >> 1) : c >> 1;
        }
        return ~c;
    }

    /// <summary>The PNG fixture with IHDR claiming <paramref name="w"/>×<paramref name="h"/> (CRC fixed, so only the size is wrong).</summary>
    private static byte[] PngClaiming(int w, int h)
    {
        var png = File.ReadAllBytes(Fixture("images/gradient_37x23.png"));
        BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(16), w);
        BinaryPrimitives.WriteInt32BigEndian(png.AsSpan(20), h);
        BinaryPrimitives.WriteUInt32BigEndian(png.AsSpan(29), Crc32(png.AsSpan(12, 17)));
        return png;
    }

    /// <summary>The JPEG fixture with its SOF0 frame header claiming <paramref name="w"/>×<paramref name="h"/>.</summary>
    private static byte[] JpegClaiming(int w, int h)
    {
        var jpg = File.ReadAllBytes(Fixture("images/smooth_64x48.jpg"));
        int sof = jpg.AsSpan().IndexOf(new byte[] { 0xFF, 0xC0 });
        Assert.True(sof > 0, "fixture JPEG has no SOF0 marker");
        BinaryPrimitives.WriteUInt16BigEndian(jpg.AsSpan(sof + 5), (ushort)h);
        BinaryPrimitives.WriteUInt16BigEndian(jpg.AsSpan(sof + 7), (ushort)w);
        return jpg;
    }

    private IEnumerable<Case> ImageCases()
    {
        var jpg = File.ReadAllBytes(Fixture("images/smooth_64x48.jpg"));
        var png = File.ReadAllBytes(Fixture("images/gradient_37x23.png"));
        var bmp = File.ReadAllBytes(Fixture("images/rgb_25x15.bmp"));
        var gif = File.ReadAllBytes(Fixture("images/palette_23x19.gif"));
        var webp = File.ReadAllBytes(Fixture("images/lossless_18x11.webp"));
        var hugeBmp = (byte[])bmp.Clone();
        BinaryPrimitives.WriteInt32LittleEndian(hugeBmp.AsSpan(18), 100_000);
        BinaryPrimitives.WriteInt32LittleEndian(hugeBmp.AsSpan(22), 100_000);
        var hugeGif = (byte[])gif.Clone();
        BinaryPrimitives.WriteUInt16LittleEndian(hugeGif.AsSpan(6), 65535);
        BinaryPrimitives.WriteUInt16LittleEndian(hugeGif.AsSpan(8), 65535);
        var scrambledPng = (byte[])png.Clone();
        int idat = png.AsSpan().IndexOf("IDAT"u8);
        for (int i = idat + 6; i < Math.Min(png.Length - 16, idat + 60); i++) scrambledPng[i] ^= 0x5A;
        var randomBytes = new byte[4096];
        new Random(7).NextBytes(randomBytes);
        var images = new (string Name, byte[] Bytes, string Input)[]
        {
            ("zero.jpg", [], "zero-byte JPEG"),
            ("zero.png", [], "zero-byte PNG"),
            ("trunc_half.jpg", jpg[..(jpg.Length / 2)], "JPEG truncated to half"),
            ("trunc_header.jpg", jpg[..20], "JPEG cut after its first 20 bytes"),
            ("trunc_half.png", png[..(png.Length / 2)], "PNG truncated to half"),
            ("trunc_ihdr.png", png[..33], "PNG cut right after IHDR"),
            ("scrambled_idat.png", scrambledPng, "PNG with scrambled IDAT (zlib/CRC broken)"),
            ("huge.png", PngClaiming(100_000, 100_000), "PNG header claiming 100000×100000"),
            ("huge_area.png", PngClaiming(16_000, 16_000), "PNG header claiming 16000×16000 (256 Mpx)"),
            ("huge.jpg", JpegClaiming(65_000, 65_000), "JPEG frame claiming 65000×65000"),
            ("huge.bmp", hugeBmp, "BMP header claiming 100000×100000"),
            ("huge.gif", hugeGif, "GIF screen claiming 65535×65535"),
            ("trunc.webp", webp[..(webp.Length / 2)], "WebP truncated to half"),
            ("random.jpg", randomBytes, "4 KiB of random bytes named .jpg"),
            ("text.png", Encoding.UTF8.GetBytes("this is not an image\n"), "a text file named .png"),
        };
        string[] Predict(string path) => ["predict", "--model", "vit_nano", "--img-size", "32", "--threads", "1", path];
        foreach (var (name, bytes, input) in images)
        {
            string path = Write("images/" + name, bytes);
            yield return new Case("image", input, Predict(path), [1], path);
        }
        string folder = Path.Combine(dir, "images", "a-folder.jpg");
        Directory.CreateDirectory(folder);
        yield return new Case("image", "a directory given as an image", Predict(folder), [1], folder);
        string missing = Path.Combine(dir, "images", "missing.jpg");
        yield return new Case("image", "a file that does not exist", Predict(missing), [1], missing, "not found");

        // An ImageFolder with broken files: eval skips and counts them, and --strict-data stops at the first one.
        string root = Path.Combine(dir, "imagefolder");
        for (int i = 0; i < 3; i++)
        {
            Write($"imagefolder/val/alpha/good{i}.png", png);
            Write($"imagefolder/val/beta/good{i}.jpg", jpg);
        }
        string brokenJpg = Write("imagefolder/val/alpha/broken.jpg", jpg[..(jpg.Length / 2)]);
        string emptyPng = Write("imagefolder/val/beta/empty.png", []);
        string[] Eval(params string[] more) => ["eval", "--model", "vit_nano", "--img-size", "32", "--data", root, "--workers", "0", "--threads", "1", "--out", Path.Combine(dir, "eval-out"), .. more];
        yield return new Case("image", "ImageFolder with a truncated JPEG and a zero-byte PNG (eval skips and counts)", Eval(), [0],
            "skipped", brokenJpg, emptyPng, "2 unreadable file(s) skipped");
        yield return new Case("image", "the same ImageFolder with --strict-data", Eval("--strict-data"), [1], "broken.jpg");
    }

    // ---------------------------------------------------------------- datasets

    /// <summary>A copy of a valid IDX folder with one file replaced.</summary>
    private string IdxVariant(string name, string file, byte[] bytes)
    {
        string root = Path.Combine(dir, "idx-" + name);
        Directory.CreateDirectory(root);
        foreach (var f in Directory.EnumerateFiles(Path.Combine(dir, "idx-good"))) File.Copy(f, Path.Combine(root, Path.GetFileName(f)));
        File.WriteAllBytes(Path.Combine(root, file), bytes);
        return root;
    }

    private static byte[] Gzip(byte[] raw)
    {
        using var ms = new MemoryStream();
        using (var gz = new GZipStream(ms, CompressionLevel.Fastest)) gz.Write(raw);
        return ms.ToArray();
    }

    private static byte[] IdxBytes(byte type, int[] dims, int dataBytes)
    {
        var b = new byte[4 + 4 * dims.Length + dataBytes];
        b[2] = type;
        b[3] = (byte)dims.Length;
        for (int i = 0; i < dims.Length; i++) BinaryPrimitives.WriteInt32BigEndian(b.AsSpan(4 + 4 * i), dims[i]);
        return b;
    }

    private IEnumerable<Case> DatasetCases()
    {
        FaultFixtures.IdxFolder(dir, train: 16, test: 8, name: "idx-good");
        const string images = "train-images-idx3-ubyte.gz", labels = "train-labels-idx1-ubyte.gz";
        var good = File.ReadAllBytes(Path.Combine(dir, "idx-good", images));
        var variants = new (string Name, string File, byte[] Bytes, string Input)[]
        {
            ("magic", images, Gzip(IdxBytes(0x0D, [16, 28, 28], 16 * 784 * 4)), "IDX images with the float32 magic (0x0D)"),
            ("dims", labels, Gzip(IdxBytes(0x08, [16, 28, 28], 16 * 784)), "IDX labels file with 3 dimensions"),
            ("trunc", images, Gzip(IdxBytes(0x08, [16, 28, 28], 5 * 784)), "IDX images truncated (5 of 16 images)"),
            ("count", labels, Gzip(IdxBytes(0x08, [12], 12)), "IDX with 16 images but 12 labels"),
            ("huge", images, Gzip(IdxBytes(0x08, [2_000_000_000, 28, 28], 784)), "IDX header claiming 2,000,000,000 images"),
            ("bigcount", images, Gzip(IdxBytes(0x08, [2_000_000, 28, 28], 784)), "IDX header claiming 2,000,000 images, file holds 1"),
            ("zero", images, [], "zero-byte IDX images file"),
            ("notgzip", images, Encoding.UTF8.GetBytes("this is not gzip data at all"), "IDX .gz that is not gzip"),
            ("gzcut", images, good[..(good.Length / 2)], "IDX .gz stream cut in half"),
            ("label", labels, Gzip([0, 0, 8, 1, 0, 0, 0, 16, .. Enumerable.Repeat((byte)200, 16)]), "IDX labels of 200 (10 classes)"),
        };
        foreach (var (name, file, bytes, input) in variants)
        {
            string root = IdxVariant(name, file, bytes);
            string path = Path.Combine(root, file);
            yield return new Case("dataset", input + " (eval)",
                ["eval", "--model", "vit_nano", "--img-size", "32", "--data", root, "--split", "train", "--workers", "0", "--threads", "1", "--out", Path.Combine(dir, "eval-" + name)],
                [1], path);
            yield return new Case("dataset", input + " (train)",
                ["train", "--model", "vit_nano", "--img-size", "32", "--data", root, "--epochs", "1", "--batch", "8", "--threads", "1", "--set", "aa=null",
                 "--out", Path.Combine(dir, "train-" + name)], [1], path);
        }
        string empty = Path.Combine(dir, "empty-dataset");
        Directory.CreateDirectory(empty);
        yield return new Case("dataset", "an empty folder as --data (eval)", ["eval", "--model", "vit_nano", "--img-size", "32", "--data", empty], [1], empty, "no dataset found");
        string cifar = Path.Combine(dir, "cifar");
        Write("cifar/test_batch.bin", new byte[3073 * 2 + 100]);
        yield return new Case("dataset", "CIFAR-10 test_batch.bin of 2.03 records (eval)", ["eval", "--model", "vit_nano", "--img-size", "32", "--data", cifar], [1],
            Path.Combine(cifar, "test_batch.bin"));
    }

    // ---------------------------------------------------------------- checkpoints and pickles

    private string SaveWeights(string name, string model, Action<ImageClassifier>? tamper = null)
    {
        torch.manual_seed(0);
        using var m = ModelRegistry.Create(model, new ModelOptions(10, 32));
        tamper?.Invoke(m);
        string path = Path.Combine(dir, "weights", name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        ModelWeights.Save(m, model, path);
        return path;
    }

    /// <summary>A torch zip checkpoint (archive/data.pkl) around a hand-written pickle.</summary>
    private string Pth(string name, byte[] pickle)
    {
        string path = Path.Combine(dir, "pickles", name);
        Directory.CreateDirectory(Path.GetDirectoryName(path)!);
        using var zip = ZipFile.Open(path, ZipArchiveMode.Create);
        using (var s = zip.CreateEntry("archive/data.pkl", CompressionLevel.NoCompression).Open()) s.Write(pickle);
        using (var s = zip.CreateEntry("archive/version", CompressionLevel.NoCompression).Open()) s.Write("3\n"u8);
        return path;
    }

    /// <summary>Pickle opcodes, written by hand (protocol 2/4 subset), so nothing here depends on Python.</summary>
    private sealed class P
    {
        private readonly List<byte> b = [0x80, 0x02];

        public P Op(params byte[] ops)
        {
            b.AddRange(ops);
            return this;
        }

        public P Text(string s) => Op(Encoding.ASCII.GetBytes(s));

        /// <summary>GLOBAL 'module\nname\n'.</summary>
        public P Global(string module, string name) => Op((byte)'c').Text($"{module}\n{name}\n");

        /// <summary>BINUNICODE.</summary>
        public P Str(string s)
        {
            var u = Encoding.UTF8.GetBytes(s);
            Op((byte)'X');
            var len = new byte[4];
            BinaryPrimitives.WriteInt32LittleEndian(len, u.Length);
            return Op(len).Op(u);
        }

        public byte[] Stop() => [.. b, (byte)'.'];
    }

    private IEnumerable<Case> CheckpointCases()
    {
        string[] Predict(string weights, params string[] more) =>
            ["predict", "--model", "vit_nano", "--img-size", "32", "--threads", "1", "--weights", weights, .. more, Fixture("images/smooth_64x48.jpg")];
        string good = SaveWeights("vit_nano.safetensors", "vit_nano");
        var bytes = File.ReadAllBytes(good);
        string other = SaveWeights("t2t_vit_nano.safetensors", "t2t_vit_nano");
        yield return new Case("checkpoint", "weights of another model (t2t_vit_nano for vit_nano)", Predict(other), [1], other, "do not fit");
        string nan = SaveWeights("nan.safetensors", "vit_nano", m =>
        {
            using var _ = torch.no_grad();
            m.named_parameters().First(p => p.name == "blocks.1.mlp.fc1.weight").parameter[0, 0] = float.NaN;
        });
        yield return new Case("checkpoint", "weights with one NaN (predict)", Predict(nan), [1], nan, "'blocks.1.mlp.fc1.weight' holds 1 NaN or Inf");
        string inf = SaveWeights("inf.safetensors", "vit_nano", m =>
        {
            using var _ = torch.no_grad();
            m.named_parameters().First(p => p.name == "head.bias").parameter.fill_(float.PositiveInfinity);
        });
        yield return new Case("checkpoint", "weights with +Inf in head.bias (predict)", Predict(inf), [1], inf, "'head.bias' holds 10 NaN or Inf");
        string idxGood = Path.Combine(dir, "idx-good");
        yield return new Case("checkpoint", "weights with one NaN (eval)", ["eval", "--model", "vit_nano", "--weights", nan, "--data", idxGood, "--threads", "1"], [1], nan, "NaN");
        yield return new Case("checkpoint", "weights with one NaN (train --init-from)",
            ["train", "--model", "vit_nano", "--img-size", "32", "--data", idxGood, "--init-from", nan, "--epochs", "1", "--batch", "8", "--threads", "1",
             "--out", Path.Combine(dir, "init-nan")], [1], nan, "NaN");
        yield return new Case("checkpoint", "weights of another model (train --init-from)",
            ["train", "--model", "vit_nano", "--img-size", "32", "--data", idxGood, "--init-from", other, "--epochs", "1", "--batch", "8", "--threads", "1",
             "--out", Path.Combine(dir, "init-other")], [1], other, "do not fit");
        foreach (var (name, data, input) in new (string, byte[], string)[]
                 {
                     ("trunc_half.safetensors", bytes[..(bytes.Length / 2)], "safetensors truncated to half"),
                     ("trunc_header.safetensors", bytes[..100], "safetensors cut inside its header"),
                     ("zero.safetensors", [], "zero-byte weights file"),
                     ("hugeheader.safetensors", [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F, (byte)'{', (byte)'}'], "safetensors header length 2^63−1"),
                     ("badjson.safetensors", [8, 0, 0, 0, 0, 0, 0, 0, .. "{\"a\":[}}"u8], "safetensors header of broken JSON"),
                     ("offsets.safetensors", OffsetsBeyondEnd(), "safetensors tensor offsets beyond the end of the file"),
                     ("trunc.pth", File.ReadAllBytes(Fixture("pth/state_zip.pth"))[..600], "torch zip .pth truncated"),
                     ("random.pth", Enumerable.Range(0, 2048).Select(i => (byte)(i * 37 + 11)).ToArray(), "2 KiB of noise named .pth"),
                 })
        {
            string path = Write("weights/" + name, data);
            yield return new Case("checkpoint", input, Predict(path), [1], path);
        }

        // A training run to break: its checkpoint truncated, or replaced by plain weights.
        string run = Path.Combine(dir, "run-trunc");
        var made = CliProcess.Run(["train", "--model", "vit_nano", "--img-size", "32", "--data", idxGood, "--epochs", "1", "--batch", "8", "--threads", "1",
                                   "--set", "aa=null", "--warmup-epochs", "0", "--cooldown-epochs", "0", "--out", run]);
        Assert.True(made.Code == 0, made.ToString());
        string ck = Trainer.LastCheckpointPath(run);
        string runWeights = Path.Combine(dir, "run-weights");
        CopyTree(run, runWeights);
        var ckBytes = File.ReadAllBytes(ck);
        File.WriteAllBytes(ck, ckBytes[..(ckBytes.Length * 2 / 3)]);
        yield return new Case("checkpoint", "train --resume with last.ckpt truncated to 2/3", ["train", "--resume", "--out", run, "--threads", "1"], [1, 2], ck, "truncated");
        string ck2 = Trainer.LastCheckpointPath(runWeights);
        File.Copy(good, ck2, overwrite: true);
        yield return new Case("checkpoint", "train --resume with last.ckpt replaced by plain weights", ["train", "--resume", "--out", runWeights, "--threads", "1"], [1, 2],
            ck2, "not an AllTokens training checkpoint");
        yield return new Case("checkpoint", "a training checkpoint of vit_nano given to predict t2t_vit_nano",
            ["predict", "--model", "t2t_vit_nano", "--img-size", "32", "--threads", "1", "--weights", Path.Combine(runWeights, "last.safetensors"), Fixture("images/smooth_64x48.jpg")],
            [1], "last.safetensors", "do not fit");

        // Malicious pickles: each payload would create the marker file if anything ran it.
        string cmd = $"touch {Marker}";
        var pickles = new (string Name, byte[] Pickle, string Input, string Named)[]
        {
            ("os_system.pth", new P().Global("os", "system").Str(cmd).Op(0x85, (byte)'R').Stop(), "GLOBAL os.system + REDUCE", "os.system"),
            ("posix_system.pth", new P().Global("posix", "system").Str(cmd).Op(0x85, (byte)'R').Stop(), "GLOBAL posix.system + REDUCE", "posix.system"),
            ("eval.pth", new P().Global("builtins", "eval").Str($"__import__('os').system('{cmd}')").Op(0x85, (byte)'R').Stop(), "REDUCE of builtins.eval", "builtins.eval"),
            ("exec.pth", new P().Global("__builtin__", "exec").Str($"import os; os.system('{cmd}')").Op(0x85, (byte)'R').Stop(), "REDUCE of __builtin__.exec", "__builtin__.exec"),
            ("stack_global.pth", new P().Str("subprocess").Str("Popen").Op(0x93).Op((byte)']').Str("touch").Op((byte)'a').Str(Marker).Op((byte)'a', 0x85, (byte)'R').Stop(),
                "STACK_GLOBAL subprocess.Popen + REDUCE", "subprocess.Popen"),
            ("newobj.pth", new P().Global("subprocess", "Popen").Op((byte)']').Str("touch").Op((byte)'a').Str(Marker).Op((byte)'a', 0x85, 0x81).Stop(),
                "NEWOBJ of subprocess.Popen", "subprocess.Popen"),
            ("inst.pth", new P().Op((byte)'(').Str(cmd).Text("ios\nsystem\n").Stop(), "INST os.system (protocol 0 call)", "0x69"),
            ("obj.pth", new P().Op((byte)'(').Global("os", "system").Str(cmd).Op((byte)'o').Stop(), "OBJ os.system", "0x6f"),
            ("ext1.pth", new P().Op(0x82, 1).Stop(), "EXT1 (copyreg extension registry)", "0x82"),
            ("reduce_in_dict.pth", new P().Op((byte)'}').Str("weight").Global("os", "system").Str(cmd).Op(0x85, (byte)'R', (byte)'s').Stop(),
                "state dict whose only value is an os.system call", "os.system"),
            ("build_setstate.pth", new P().Global("collections", "OrderedDict").Op((byte)')', (byte)'R', (byte)'}').Str("__setstate__").Global("os", "system")
                .Op((byte)'s', (byte)'b').Stop(), "BUILD with __setstate__ = os.system on an OrderedDict", "empty dict"),
            ("persid_global.pth", new P().Op((byte)'}').Str("weight").Global("torch._utils", "_rebuild_tensor_v2")
                .Op((byte)'(', (byte)'(').Str("storage").Global("os", "system").Str("0").Str("cpu").Op((byte)'K', 4, (byte)'t', (byte)'Q')
                .Op((byte)'K', 0).Op((byte)'K', 4, 0x85).Op((byte)'K', 1, 0x85).Op(0x89, (byte)')', (byte)'t', (byte)'R', (byte)'s').Stop(),
                "tensor rebuild whose storage type is os.system", "os.system"),
            ("self_ref.pth", new P().Op((byte)']', (byte)'q', 0, (byte)'h', 0, (byte)'a').Stop(), "a list that contains itself", "no state dict"),
            ("deep.pth", [0x80, 0x02, .. Enumerable.Repeat((byte)']', 200_000), .. Enumerable.Repeat((byte)'a', 199_999), (byte)'.'], "200,000 nested lists", "no state dict"),
            ("laughs.pth", BillionLaughs(40), "2^40 leaves by shared references (billion laughs)", "no state dict"),
            ("hugestr.pth", new P().Op((byte)'X', 0xFF, 0xFF, 0xFF, 0xFF).Stop(), "BINUNICODE claiming 4 GiB", "pickle"),
        };
        foreach (var (name, pickle, input, named) in pickles)
        {
            string path = Pth(name, pickle);
            yield return new Case("pickle", input, Predict(path), [1], path, named);
        }
        foreach (var (fixture, named) in new[] { ("malicious.pth", "posix.system"), ("malicious_mixed.pth", "do not fit") })
            yield return new Case("pickle", $"fixture {fixture} (made by torch 1.13, tools/make_pth_fixtures.py)", Predict(Fixture("pth/" + fixture)), [1], fixture, named);
    }

    private static byte[] BillionLaughs(int levels)
    {
        // memo[0] = [0, 0]; memo[i] = [memo[i-1], memo[i-1]]
        var p = new List<byte> { 0x80, 0x02, (byte)']', (byte)'q', 0, (byte)'K', 0, (byte)'a', (byte)'K', 0, (byte)'a' };
        for (int i = 1; i < levels; i++) p.AddRange([(byte)']', (byte)'q', (byte)i, (byte)'h', (byte)(i - 1), (byte)'a', (byte)'h', (byte)(i - 1), (byte)'a']);
        p.Add((byte)'.');
        return [.. p];
    }

    private static byte[] OffsetsBeyondEnd()
    {
        var header = Encoding.UTF8.GetBytes("{\"w\":{\"dtype\":\"F32\",\"shape\":[1000000],\"data_offsets\":[0,4000000]}}");
        var b = new byte[8 + header.Length + 16];
        BinaryPrimitives.WriteUInt64LittleEndian(b, (ulong)header.Length);
        header.CopyTo(b, 8);
        return b;
    }

    private static void CopyTree(string from, string to)
    {
        foreach (var d in Directory.EnumerateDirectories(from, "*", SearchOption.AllDirectories))
            Directory.CreateDirectory(Path.Combine(to, Path.GetRelativePath(from, d)));
        Directory.CreateDirectory(to);
        foreach (var f in Directory.EnumerateFiles(from, "*", SearchOption.AllDirectories))
            File.Copy(f, Path.Combine(to, Path.GetRelativePath(from, f)));
    }

    // ---------------------------------------------------------------- token-label stores

    private IEnumerable<Case> LabelStoreCases()
    {
        var png = File.ReadAllBytes(Fixture("images/gradient_37x23.png"));
        foreach (var (set, stem) in new[] { ("lbl-a", "img"), ("lbl-b", "other") })
            for (int c = 0; c < 3; c++)
                for (int i = 0; i < 4; i++)
                    Write($"{set}/train/c{c}/{stem}{i}.png", png);
        // The same file names as lbl-a over other pictures: keys alone cannot tell them apart.
        var gray = File.ReadAllBytes(Fixture("images/gray_19x13.png"));
        for (int c = 0; c < 3; c++)
            for (int i = 0; i < 4; i++)
                Write($"lbl-c/train/c{c}/img{i}.png", gray);
        string a = Path.Combine(dir, "lbl-a"), b = Path.Combine(dir, "lbl-b"), store = Path.Combine(dir, "stores", "a.labels");
        var made = CliProcess.Run(["label", "--annotator", "lvvit_nano", "--data", a, "--out", store, "--img-size", "32", "--topk", "2", "--threads", "1"]);
        Assert.True(made.Code == 0, made.ToString());
        string[] Train(string data, string labels) =>
            ["train", "--model", "lvvit_nano", "--img-size", "32", "--data", data, "--epochs", "1", "--batch", "4", "--threads", "1", "--set", "aa=null",
             "--set", "token_label=true", "--set", $"token_label_data={labels}", "--out", Path.Combine(dir, $"tl-run-{runs++}")];
        yield return new Case("labels", "label store of another dataset (other file names)", Train(b, store), [1], store, "another dataset or split");
        yield return new Case("labels", "label store of other pictures under the same file names", Train(Path.Combine(dir, "lbl-c"), store), [1], store,
            "made from other images");
        yield return new Case("labels", "label store of 3 classes for a 10-class dataset", Train(Path.Combine(dir, "idx-good"), store), [1], store, "labels for 3 classes");
        var bytes = File.ReadAllBytes(store);
        string trunc = Write("stores/trunc.labels", bytes[..(bytes.Length / 2)]);
        yield return new Case("labels", "label store truncated to half", Train(a, trunc), [1], trunc, "truncated");
        string zero = Write("stores/zero.labels", []);
        yield return new Case("labels", "zero-byte label store", Train(a, zero), [1], zero);
        var flipped = (byte[])bytes.Clone();
        flipped[600] ^= 0xFF; // inside the first record (the header is 512 bytes)
        string flip = Write("stores/flip.labels", flipped);
        yield return new Case("labels", "label store with a flipped byte in a record", Train(a, flip), [1], flip, "checksum mismatch");
        string notStore = Write("stores/weights.labels", File.ReadAllBytes(Path.Combine(dir, "weights", "vit_nano.safetensors")));
        yield return new Case("labels", "a safetensors file given as a label store", Train(a, notStore), [1], notStore);
        string missing = Path.Combine(dir, "stores", "missing.labels");
        yield return new Case("labels", "a label store that does not exist", Train(a, missing), [1], missing);
        yield return new Case("labels", "label inspect of a truncated store", ["label", "inspect", trunc], [1], trunc, "truncated");
        string other = Path.Combine(dir, "stores", "resume.labels");
        File.Copy(store, other);
        yield return new Case("labels", "label resuming a store made with another top-k",
            ["label", "--annotator", "lvvit_nano", "--data", a, "--out", other, "--img-size", "32", "--topk", "1", "--threads", "1"], [1], other, "cannot resume");
    }

    // ---------------------------------------------------------------- recipes and CLI values

    private IEnumerable<Case> RecipeCases()
    {
        string data = Path.Combine(dir, "idx-good");
        string[] Train(string recipe) => ["train", "--recipe", recipe, "--data", data, "--threads", "1", "--out", Path.Combine(dir, "recipe-run")];
        var recipes = new (string Name, string Text, string Input, string[] Expect)[]
        {
            ("typo.yaml", "model: vit_nano\nwarmup_epoch: 3\n", "unknown key (typo)", [":2", "'warmup_epoch'", "did you mean 'warmup_epochs'"]),
            ("foreign.yaml", "model: vit_nano\nmodel_ema_force_cpu: true\n", "unknown key (timm flag we do not have)", [":2", "'model_ema_force_cpu'"]),
            ("malformed.yaml", "model: vit_nano\nlr: [0.1\nepochs: 3\n", "malformed YAML", ["malformed YAML"]),
            ("type.yaml", "model: vit_nano\nlr: fast\n", "lr: fast", [":2", "'lr' expects a number"]),
            ("list.yaml", "model: vit_nano\nepochs: [1, 2]\n", "a list where a number belongs", [":2", "'epochs'"]),
            ("notmap.yaml", "- model\n- vit_nano\n", "a YAML list instead of a mapping", ["a recipe is a mapping"]),
            ("dup.yaml", "model: vit_nano\nlr: 0.1\nlr: 0.2\n", "a key given twice", [":3", "Duplicate key lr"]),
            ("range.yaml", "model: vit_nano\nbatch_size: 0\n", "batch_size: 0", ["batch_size", "≥ 1"]),
            ("nan.yaml", "model: vit_nano\nlr: .nan\n", "lr: .nan", ["'lr' expects a number"]),
            ("aliases.yaml", "a: &a [x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b, *b, *b, *b, *b]\n",
                "YAML alias bomb", ["unknown key 'a'"]),
        };
        foreach (var (name, text, input, expect) in recipes)
        {
            string path = WriteText("recipes/" + name, text);
            yield return new Case("recipe", input, Train(path), [2], [path, .. expect]);
        }
        var garbage = new byte[1024];
        new Random(3).NextBytes(garbage);
        string bin = Write("recipes/garbage.yaml", garbage);
        yield return new Case("recipe", "1 KiB of random bytes as a recipe", Train(bin), [2], bin);
        string missing = Path.Combine(dir, "recipes", "missing.yaml");
        yield return new Case("recipe", "a recipe file that does not exist", Train(missing), [1, 2], missing);
    }

    private int runs;

    private IEnumerable<Case> CliValueCases()
    {
        string data = Path.Combine(dir, "idx-good");
        // A valid train command with the flags in `more` replacing or adding to the defaults.
        string[] Train(params string[] more)
        {
            var args = new List<string> { "train" };
            var defaults = new (string Flag, string Value)[]
            {
                ("--model", "vit_nano"), ("--img-size", "32"), ("--data", data), ("--epochs", "1"), ("--batch", "8"), ("--threads", "1"),
                ("--out", Path.Combine(dir, $"cli-run-{runs++}")),
            };
            foreach (var (flag, value) in defaults)
                if (!more.Contains(flag)) args.AddRange([flag, value]);
            return [.. args, .. more];
        }
        string img = Fixture("images/smooth_64x48.jpg");
        var cases = new (string Input, string[] Args, int[] Codes, string[] Expect)[]
        {
            ("--batch 0", Train("--batch", "0"), [2], ["batch_size", "≥ 1"]),
            ("--batch -3", Train("--batch", "-3"), [2], ["batch_size"]),
            ("--batch abc", Train("--batch", "abc"), [2], ["'batch_size' expects an integer"]),
            ("--lr nan", Train("--lr", "nan"), [2], ["'lr' expects a number"]),
            ("--lr 1e999", Train("--lr", "1e999"), [2], ["'lr' expects a number"]),
            ("--epochs 99999999999", Train("--epochs", "99999999999"), [2], ["'epochs' expects an integer"]),
            ("--img-size 8", Train("--img-size", "8"), [2], ["img_size"]),
            ("--img-size 100000", Train("--img-size", "100000"), [2], ["img_size"]),
            ("--workers 100000", Train("--workers", "100000"), [2], ["workers"]),
            ("--grad-accum -1", Train("--grad-accum", "-1"), [2], ["grad_accum"]),
            ("--set mixup=-1", Train("--set", "mixup=-1"), [2], ["mixup"]),
            ("--set noequals", Train("--set", "noequals"), [2], ["--set expects KEY=VALUE"]),
            ("--set =3", Train("--set", "=3"), [2], ["--set expects KEY=VALUE"]),
            ("--set opt_betas=[0.9]", Train("--set", "opt_betas=[0.9]"), [2], ["opt_betas"]),
            ("--threads 0", Train("--threads", "0"), [2], ["--threads"]),
            ("--threads abc", Train("--threads", "abc"), [2], ["--threads expects an integer"]),
            ("--device tpu", Train("--device", "tpu"), [2], ["--device must be one of"]),
            ("unknown flag --lrr", Train("--lrr", "0.1"), [2], ["unknown option --lrr", "did you mean --lr"]),
            ("--model without a value", ["train", "--data", data, "--model"], [2], ["--model needs a value"]),
            ("--model not_a_model", Train("--model", "not_a_model"), [1, 2], ["not_a_model"]),
            ("--data that does not exist", Train("--data", Path.Combine(dir, "nowhere")), [1], [Path.Combine(dir, "nowhere")]),
            ("--num-classes 3 on a 10-class dataset", Train("--num-classes", "3"), [1, 2], ["num_classes 3"]),
            ("--resume without --out", ["train", "--resume"], [2], ["--resume needs --out"]),
            ("--resume of a folder with no run", ["train", "--resume", "--out", Path.Combine(dir, "no-run")], [1], ["no such run folder to resume"]),
            ("--out inside a file", Train("--out", Path.Combine(img, "run")), [1], ["cannot write to the run folder"]),
            ("predict without images", ["predict", "--model", "vit_nano"], [2], ["needs"]),
            ("predict --top 0", ["predict", "--model", "vit_nano", "--img-size", "32", "--top", "0", img], [2], ["--top"]),
            ("predict --crop-pct 2", ["predict", "--model", "vit_nano", "--img-size", "32", "--crop-pct", "2", img], [2], ["--crop-pct"]),
            ("predict --interpolation nearest", ["predict", "--model", "vit_nano", "--img-size", "32", "--interpolation", "nearest", img], [2], ["--interpolation"]),
            ("predict --img-size 100000", ["predict", "--model", "vit_nano", "--img-size", "100000", img], [2], ["--img-size"]),
            ("eval --split test", ["eval", "--model", "vit_nano", "--data", data, "--split", "test"], [2], ["--split must be one of"]),
            ("eval --batch 0", ["eval", "--model", "vit_nano", "--data", data, "--batch", "0"], [2], ["--batch"]),
            ("an unknown verb", ["trian", "--model", "vit_nano"], [2], ["unknown command 'trian'", "did you mean train"]),
        };
        foreach (var (input, args, codes, expect) in cases) yield return new Case("cli", input, args, codes, expect);
    }

    [Fact]
    public void EveryHostileInputIsAClearErrorOrACountedSkip()
    {
        var clock = Stopwatch.StartNew();
        File.Delete(Marker);
        File.Delete("/tmp/alltokens_pwned"); // the torch-made fixtures' payload
        var cases = ImageCases().Concat(DatasetCases()).Concat(CheckpointCases()).Concat(LabelStoreCases()).Concat(RecipeCases()).Concat(CliValueCases()).ToList();
        var results = new CliResult[cases.Count];
        // Two at a time: each is its own process, and most of the time goes to starting the runtime.
        Parallel.For(0, cases.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Min(2, Environment.ProcessorCount) },
            i => results[i] = CliProcess.Run(cases[i].Args, timeoutSeconds: 60));
        var failures = new List<string>();
        for (int i = 0; i < cases.Count; i++)
        {
            var (c, r) = (cases[i], results[i]);
            var lines = r.Err.Split('\n');
            string firstLine = lines.FirstOrDefault(l => l.StartsWith("alltokens", StringComparison.Ordinal) || l.StartsWith("warning", StringComparison.Ordinal)) ?? lines[0];
            string verdict = r.TimedOut ? "HANG" : r.Crashed ? "CRASH" : !c.Codes.Contains(r.Code) ? $"exit {r.Code}, expected {string.Join("/", c.Codes)}"
                : c.Expect.FirstOrDefault(e => !r.Err.Contains(e, StringComparison.Ordinal)) is { } missing ? $"stderr lacks '{missing}'" : "ok";
            FaultReport.Line($"{c.Group,-10} {c.Input,-75} exit {r.Code}  {(verdict == "ok" ? "" : "FAIL: " + verdict + "  ")}{Shorten(firstLine.Replace(dir, "$T"))}");
            if (verdict != "ok") failures.Add($"[{c.Group}] {c.Input}: {verdict}\n  {string.Join(' ', c.Args)}\n  {r}");
        }
        Assert.False(File.Exists(Marker), "a pickle payload ran: the marker file exists");
        Assert.False(File.Exists("/tmp/alltokens_pwned"), "a fixture's pickle payload ran");
        FaultReport.Line($"hostile inputs: {cases.Count} inputs tried ({string.Join(", ", cases.GroupBy(c => c.Group).Select(g => $"{g.Count()} {g.Key}"))}), " +
                         $"{cases.Count - failures.Count} handled cleanly, {failures.Count} not; {clock.Elapsed.TotalSeconds:F0} s");
        Assert.True(failures.Count == 0, $"{failures.Count} of {cases.Count} inputs were not handled cleanly:\n{string.Join("\n", failures)}");
    }

    private static string Shorten(string s) => s.Length <= 220 ? s.Trim() : s[..217].Trim() + "...";
}
