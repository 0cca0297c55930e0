# The sampling rules, one per section of the post. Each writes results/<figure>.safetensors (raw tensors and
# the record of how they were made) and results/<figure>.seconds.json (the seconds the job took, which the post
# shows under the figure); figures.smk lays them out. A rule gets only its figure's parameters, so
# editing one prompt reruns only the figures that use it.


rule input_image:
    """An input image the project ships (inputs: builtin:NAME)."""
    output:
        "results/inputs/{name}.png",
    run:
        from diffusion_post.build import write_builtin_input

        write_builtin_input(wildcards.name, output[0])


rule encode_prompt:
    """One prompt's embedding, for the backends whose text encoder (T5) runs apart from the UNets: every encode
    job runs before any sampling job (priority), so T5 loads once, encodes every new prompt, and is released
    before the first UNet loads. A cached prompt never loads T5. The record names the prompt and its embedding
    file in the backend's cache (<cache_dir>/prompt_embeds/)."""
    output:
        "results/prompt_embeds/{digest}.json",
    wildcard_constraints:
        digest="|".join(PROMPTS) or "^$",
    params:
        prompt=lambda w: PROMPTS[w.digest],
        text_encoder=text_encoder_settings(BACKEND) if PROMPTS else {},
    priority: 100
    group:
        "encode_prompts"
    resources:
        gpu=GPU_PER_ENCODE_JOB,
    run:
        from diffusion_post.build import encode_prompt

        encode_prompt(params.prompt, BACKEND, output[0])


# One sampling rule per section of the post, sample_<section> (a figure's section is where config.yaml lists it).
# Its jobs form the group sample_<section>: on a cluster (profiles/slurm) one submitted job makes all the
# section's figures and loads each model stage once. Locally `group:` does nothing; there every job runs in
# the Snakemake process (profiles/default: force-use-threads) and the models load once per build.
SECTIONS = {
    "setup": "Section 0: stage I text-to-image and its stage-II upsampling.",
    "denoising": "Sections 1.1-1.4: forward process, blur, one-step and iterative denoising.",
    "sampling": "Sections 1.5-1.6: sampling from noise, without and with classifier-free guidance.",
    "editing": "Section 1.7: SDEdit of photos and drawings, inpainting, text-guided editing.",
    "anagrams": "Section 1.8: visual anagrams, with their stage-II upsampling.",
    "hybrids": "Section 1.9: hybrid images (factorized diffusion), with their stage-II upsampling.",
}

for section in SECTIONS:

    rule:
        name:
            f"sample_{section}"
        input:
            unpack(sampling_inputs),
        output:
            result="results/{figure}.safetensors",
            seconds="results/{figure}.seconds.json",
        wildcard_constraints:
            figure=figures_in(section) or "^$",
        params:
            place=lambda w: post_config.place(config, w.figure),
            spec=lambda w: post_config.sampling_spec(SPECS[w.figure]),
            backend=lambda w: post_config.backend_params(config, SPECS[w.figure]),
        group:
            f"sample_{section}"
        priority: lambda w: SAMPLING_PRIORITY[w.figure]  # longest first (common.smk)
        resources:
            gpu=GPU_PER_SAMPLING_JOB,
        run:
            sample_figure(wildcards, input, output, params)
