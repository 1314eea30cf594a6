"""A labelled retrieval set over a real corpus nobody here wrote: llama.cpp's documentation.

`llama-cpp-docs/` holds the 51 Markdown pages of llama.cpp's `docs/` folder as shipped in the
llama-cpp-python 0.3.36 source distribution (MIT licence, `llama-cpp-docs/LICENSE`). Each question
below is one a reader of those pages might ask, in their own words, with the page that answers it;
some share rare words with it (flags, product names), others are paraphrases. A hit is the right
page among the top results (page level, as a citation would point).
"""

from __future__ import annotations

from pathlib import Path

CORPUS = Path(__file__).with_name('llama-cpp-docs')

QUESTIONS: list[tuple[str, str]] = [
    ('How do I set up shell tab completion for llama-cli?', 'completions.md'),
    ('Which package managers can install a prebuilt llama.cpp on a Mac?', 'install.md'),
    ('Can I download a model straight from Hugging Face with a command-line flag?', 'models.md'),
    ('How do I enable constrained decoding with JSON schemas through LLGuidance?', 'llguidance.md'),
    ('Share model parameters with other people as an INI file', 'preset.md'),
    ('When is the major version number bumped?', 'release.md'),
    ('Use the library from a Swift package on iOS without compiling it', 'xcframework.md'),
    ('Which container image only has the HTTP server in it?', 'docker.md'),
    ('How do I give 75 percent of the model to the first GPU and the rest to the second?', 'multi-gpu.md'),
    ('Speed up generation by letting a small draft model propose tokens', 'speculative.md'),
    ('Does the server support OpenAI-style tool calls, and how do I allow parallel calls?', 'function-calling.md'),
    ('Find out which source files make the build slow with ClangBuildAnalyzer', 'build-profiling.md'),
    ('Run a model on an Ascend NPU', 'backend/CANN.md'),
    ('Set up CUDA inside a Fedora toolbox container', 'backend/CUDA-FEDORA.md'),
    ('Run llama.cpp on a Qualcomm Adreno GPU', 'backend/OPENCL.md'),
    ('Build for Intel GPUs with oneAPI and the icpx compiler', 'backend/SYCL.md'),
    ('Run inference from inside a virtual machine using the host GPU through virtio', 'backend/VirtGPU.md'),
    ('Accelerate matrix multiplication on AMD EPYC processors', 'backend/ZenDNN.md'),
    ('Use the NNPA accelerator of IBM Z mainframes', 'backend/zDNN.md'),
    ('Cross-compile for Snapdragon with the Hexagon SDK toolchain image', 'backend/snapdragon/README.md'),
    ('Compile BLIS as the BLAS library', 'backend/BLIS.md'),
    ('What steps are needed to support a new model architecture?', 'development/HOWTO-add-model.md'),
    ('Run a single failing test under gdb with the debug-test script', 'development/debugging-tests.md'),
    (
        'Check that layers are really offloaded to the GPU when generation is slow',
        'development/token_generation_performance_tips.md',
    ),
    ('Convert and run the MobileVLM vision model', 'multimodal/MobileVLM.md'),
    ('Try Gemma 3 with images', 'multimodal/gemma3.md'),
    ('Run the llava surgery script for IBM Granite Vision', 'multimodal/granitevision.md'),
    ('Which GGML operations does each backend support?', 'ops.md'),
    ('Build on s390x big-endian mainframes', 'build-s390x.md'),
    ('Toolchain for RISC-V SpacemiT boards', 'build-riscv64-spacemit.md'),
    ('How are reasoning and tool calls found in a chat template automatically?', 'autoparser.md'),
    ('The PEG parser used to parse model output', 'development/parsing.md'),
    ('Build the Android app with Android Studio and Gradle', 'android.md'),
    ('Enable the Metal backend on macOS', 'build.md'),
]
