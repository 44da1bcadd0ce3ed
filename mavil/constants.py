"""Normalisation statistics the data and the configs share (a leaf: imports nothing).

AUDIOSET_*: mean and std of AudioSet's Kaldi fbank, the Audio-MAE convention (x - mean) / (2 * std); other sets
take theirs from Table 10 through data.audio_mean and data.audio_std. IMAGENET_*: per RGB channel, on [0, 1].
"""

AUDIOSET_MEAN, AUDIOSET_STD = -4.2677, 4.5690
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
