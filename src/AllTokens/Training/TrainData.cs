using AllTokens.Data;
using AllTokens.Data.Datasets;
using AllTokens.Data.Transforms;
using AllTokens.Distributed;
using AllTokens.Models;

namespace AllTokens.Training;

/// <summary>The data of a run: train and validation batches and the class names.</summary>
public sealed record TrainDataSources(IBatchSource Train, IBatchSource? Val, IReadOnlyList<string> ClassNames)
{
    /// <summary>The eval preprocessing of this run (validation transform), written into the exported weights.</summary>
    public Checkpoints.Preprocessing? Preprocessing { get; init; }

    /// <summary>Samples skipped so far because their files could not be read (train and val).</summary>
    public long SkippedCount => ((Train as DataLoader)?.SkippedCount ?? 0) + ((Val as DataLoader)?.SkippedCount ?? 0);
}

/// <summary>The one place where a run's datasets and loaders are built from the config.</summary>
public static class TrainData
{
    /// <summary>
    /// Builds the train loader (the recipe's transform, shuffled, drop_last, <c>workers</c> threads) and the validation
    /// loader (timm eval transform with the model's crop_pct) for <paramref name="imgSize"/> inputs. The dataset format
    /// (ImageFolder, IDX, CIFAR) is detected from the folder. <paramref name="warn"/> receives one line per skipped file.
    /// In a data-parallel <paramref name="group"/> both loaders are sharded: this rank takes its strided part of every
    /// global batch (<c>batch_size</c> per rank) and of the validation set (the evaluator all-reduces the sums).
    /// </summary>
    public static TrainDataSources Open(TrainConfig config, int imgSize, PretrainedDefaults? defaults = null, Action<string>? warn = null,
        IProcessGroup? group = null)
    {
        int rank = group?.Rank ?? 0, world = group?.Size ?? 1;
        string path = config.Data ?? throw new ArgumentException("no dataset given: pass --data PATH (or set 'data' in the recipe)");
        defaults ??= new PretrainedDefaults(imgSize, 0.9, "bicubic");
        IImageDataset train = DatasetFactory.Open(path, "train");
        IImageDataset? val = OpenValidation(path, train);
        long seed = config.Seed;
        if (config.Subset is { } n) train = Subset.Balanced(train, n, seed);
        if (val is not null && config.ValSubset is { } v) val = Subset.Balanced(val, v, seed + 1);
        float[] mean = config.Mean?.Select(x => (float)x).ToArray() ?? defaults.Mean;
        float[] std = config.Std?.Select(x => (float)x).ToArray() ?? defaults.Std;

        ISampleTransform transform = config.TrainTransform switch
        {
            "cifar" => new CifarTrainTransform(imgSize, mean, std, config.Hflip),
            "none" => new EvalSampleTransform(new EvalTransform(new EvalTransformOptions(imgSize, 1.0, Interpolation.Bilinear, mean, std))),
            _ => new TrainTransform(TimmOptions(config, imgSize, mean, std)),
        };
        var trainLoader = new DataLoader(train, transform,
            new LoaderOptions(config.BatchSize, config.Workers, Shuffle: true, DropLast: true, seed, StrictData: config.StrictData, Rank: rank, WorldSize: world));
        if (trainLoader.BatchesPerEpoch == 0)
            throw new ArgumentException($"{train.Source}: {train.Count} images make no full batch of {trainLoader.Options.GlobalBatchSize}" +
                                        (world > 1 ? $" ({world} ranks × {config.BatchSize})" : "") + "; lower batch_size");
        var evalInterpolation = EvalInterpolation.Parse(defaults.Interpolation); // also what the weights record for eval/predict
        DataLoader? valLoader = null;
        if (val is not null)
        {
            var evalOptions = new EvalTransformOptions(imgSize, config.CropPct ?? defaults.CropPct,
                evalInterpolation, mean, std);
            valLoader = new DataLoader(val, new EvalSampleTransform(new EvalTransform(evalOptions)),
                new LoaderOptions(config.ValBatchSize ?? config.BatchSize * 2, config.Workers, Shuffle: false, DropLast: false,
                    StrictData: config.StrictData, Rank: rank, WorldSize: world));
        }
        if (warn is not null)
        {
            trainLoader.Skipped += s => warn($"warning: skipped {s.Key} (epoch {s.Epoch}): {s.Message}");
            if (valLoader is not null) valLoader.Skipped += s => warn($"warning: skipped {s.Key} (validation): {s.Message}");
        }
        return new TrainDataSources(trainLoader, valLoader, train.ClassNames)
        {
            Preprocessing = new Checkpoints.Preprocessing(mean, std, config.CropPct ?? defaults.CropPct, defaults.Interpolation),
        };
    }

    /// <summary>timm's train transform from the recipe keys; token labeling uses the official order and records geometry.</summary>
    public static TrainTransformOptions TimmOptions(TrainConfig config, int imgSize, float[] mean, float[] std) => new()
    {
        ImgSize = imgSize,
        Scale = (config.Scale[0], config.Scale[1]),
        Ratio = (config.Ratio[0], config.Ratio[1]),
        Interpolation = config.TrainInterpolation switch
        {
            "bilinear" => TrainInterpolation.Bilinear,
            "bicubic" => TrainInterpolation.Bicubic,
            _ => TrainInterpolation.Random,
        },
        HFlip = config.Hflip,
        AutoAugment = string.IsNullOrWhiteSpace(config.Aa) || config.Aa == "none" ? null : config.Aa,
        ColorJitter = config.ColorJitter > 0 ? config.ColorJitter : null,
        ReProb = config.Reprob,
        ReMode = config.Remode switch
        {
            "rand" => EraseMode.Rand,
            "const" => EraseMode.Const,
            _ => EraseMode.Pixel,
        },
        ReCount = config.Recount,
        Mean = mean,
        Std = std,
        Order = config.TokenLabel ? AugmentOrder.TokenLabel : AugmentOrder.Timm,
        RecordAugments = config.TokenLabel,
    };

    // The validation split: IDX/CIFAR test files, ImageFolder val/. A single-split ImageFolder has none (it would be the
    // training images again), so the run then trains without validation.
    private static IImageDataset? OpenValidation(string path, IImageDataset train)
    {
        try
        {
            var val = DatasetFactory.Open(path, "val");
            return val.Source == train.Source ? null : val;
        }
        catch (DatasetException)
        {
            return null;
        }
    }
}
