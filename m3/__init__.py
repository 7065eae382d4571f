"""m3: an inference engine with MiniMax-style sparse attention (MSA), an OpenAI-compatible API, a coding agent
cluster.

Heavy imports (torch) stay out of this module so that `m3.protocol`, `m3.client` and `m3.code` load without them.
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # NOTE: lazy so `import m3.client` does not pull torch through the package root.
    if name == "LLM":
        from m3.llm import LLM

        return LLM
    if name == "Config":
        from m3.config import Config

        return Config
    if name == "SamplingParams":
        from m3.sampling_params import SamplingParams

        return SamplingParams
    raise AttributeError(name)
