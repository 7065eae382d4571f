"""nn.Modules shared by the model families: rotary embedding, RMSNorm, attention (dense | MSA), sampler."""
