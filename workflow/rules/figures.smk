# Cheap layout rules: re-laying out a figure never reruns a model. Each also publishes what it lays out: a copy
# under site/assets/figures, which the site serves (common.smk: published).


rule figure:
    """A figure: the images of one result, tiled left to right."""
    input:
        result="results/{figure}.safetensors",
        code=code("layout.py", "png.py", "images.py"),
    output:
        figure=report("figures/{figure}.png", caption="../report/figure.rst", category=section_of, labels=made_by),
        published=published("figures/{figure}.png"),
    wildcard_constraints:
        figure="|".join(name for name in FIGURES if name not in FRAMES) or "(?!)",
    run:
        from diffusion_post import layout, site

        layout.figure(input.result, output.figure)
        site.publish(output.figure, output.published)


# An interactive figure (a slider or a view toggle in the post): the same strip, plus each of its frames as a
# PNG of its own, figures/NAME/frame-K.png. One rule per figure, since each has its own number of frames.
for _figure, _frames in FRAMES.items():

    rule:
        name:
            f"figure_{_figure}"
        input:
            result="results/{figure}.safetensors",
            code=code("layout.py", "png.py", "images.py"),
        output:
            figure=report("figures/{figure}.png", caption="../report/figure.rst", category=section_of, labels=made_by),
            frames=[f"figures/{{figure}}/frame-{k}.png" for k in range(len(_frames))],
            published=published("figures/{figure}.png"),
            published_frames=[published(f"figures/{{figure}}/frame-{k}.png") for k in range(len(_frames))],
        wildcard_constraints:
            figure=_figure,
        localrule: True  # cheap: on a cluster it runs where Snakemake runs, like the other layout rules
        run:
            from diffusion_post import layout, site

            layout.figure(input.result, output.figure, frames=output.frames)
            site.publish(output.figure, output.published)
            for frame, copy in zip(output.frames, output.published_frames):
                site.publish(frame, copy)


rule figure_panel:
    """A second panel of a result (the iterative-denoising comparison)."""
    input:
        result="results/{figure}.safetensors",
        code=code("layout.py", "png.py", "images.py"),
    output:
        figure=report("figures/{figure}-{panel}.png", caption="../report/figure.rst", category=section_of, labels=made_by),
        published=published("figures/{figure}-{panel}.png"),
    wildcard_constraints:
        figure="|".join(FIGURES),
        panel="comparison",
    run:
        from diffusion_post import layout, site

        layout.figure(input.result, output.figure, key=wildcards.panel)
        site.publish(output.figure, output.published)


rule animation:
    """A visual anagram turning into its other views and back."""
    input:
        result="results/{figure}.safetensors",
        code=code("layout.py", "png.py", "images.py"),
    output:
        figure=report("figures/{figure}.gif", caption="../report/figure.rst", category=section_of, labels=made_by),
        published=published("figures/{figure}.gif"),
    wildcard_constraints:
        figure="|".join(FIGURES),
    params:
        views=lambda w: SPECS[w.figure]["views"],
    run:
        from diffusion_post import layout, site

        layout.animation(input.result, output.figure, params.views)
        site.publish(output.figure, output.published)


rule denoising_metrics:
    """PSNR and SSIM of blur, one-step and iterative denoising against the original, per noise level."""
    input:
        original=lambda w: f"results/{config['post']['metrics']['source']}.safetensors",
        methods=lambda w: [f"results/{f}.safetensors" for f in config["post"]["metrics"]["methods"].values()],
        code=code("layout.py", "png.py", "images.py", "provenance.py"),
    output:
        table="results/denoising_metrics.json",
        seconds="results/denoising_metrics.seconds.json",
        plot=report("figures/denoising_metrics.png", category="denoising",
                    caption="../report/metrics.rst"),
        published=published("figures/denoising_metrics.png"),
    params:
        methods=METRICS.get("methods", {}),
    priority: 1  # mid-build (common.smk: SAMPLING_PRIORITY)
    run:
        from diffusion_post import layout, site

        layout.metrics(input.original, {m: f"results/{f}.safetensors" for m, f in params.methods.items()},
                       output.table, output.plot)
        site.publish(output.plot, output.published)
