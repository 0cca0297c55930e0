# Implementing Diffusion Models: every figure of the post, the post, and its Jekyll site, from config.yaml.
#   snakemake --cores 1            build everything (the profile in profiles/default is picked up)
#   snakemake -n                   what would rerun, and why
#   snakemake --cores 1 figures    figures only;  snakemake --cores 1 post   figures + the markdown post
#   snakemake --cores 1 data / train   the trained backend's data set / training run (GPU; not in the default target)
from snakemake.utils import min_version

min_version("9.0")


configfile: "config.yaml"


report: "workflow/report/workflow.rst"


include: "workflow/rules/common.smk"
include: "workflow/rules/sampling.smk"
include: "workflow/rules/figures.smk"
include: "workflow/rules/post.smk"
include: "workflow/rules/train.smk"


# On a cluster only the sampling jobs are submitted; layout, post and site are cheap and run where Snakemake runs.
localrules:
    all,
    figures,
    input_image,
    figure,
    figure_panel,
    animation,
    denoising_metrics,
    post,
    mathjax,
    site,
    emojibase,
    data,


rule all:
    """The whole post: figures, markdown, and the built Jekyll site."""
    default_target: True
    input:
        rules.site.output,


rule figures:
    """Every figure of the post."""
    input:
        figure_files(),
