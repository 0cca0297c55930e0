# Checking the post, outside the default target:
#   snakemake --cores 1 verify      rebuild every figure in a scratch folder and compare it with the published one
#   snakemake --cores 1 rulegraph   docs/rulegraph.svg, the picture of this workflow in the README
import sys


rule verify:
    """Rebuild every figure from config.yaml in a scratch folder and compare it, byte for byte, with the published one
    (diffusion-post verify: a table; fails unless every figure is identical). Writes nothing here."""
    shell:
        f"{sys.executable} -m diffusion_post.cli verify"


rule rulegraph:
    """The rule graph of the default target (snakemake --rulegraph), drawn by Graphviz's dot; docs/rulegraph.dot is
    its source, which tests/test_workflow.py compares with the rules."""
    input:
        "Snakefile",
        "config.yaml",
        sorted(str(p) for p in Path("workflow/rules").glob("*.smk")),
        code("project.py"),
    output:
        dot="docs/rulegraph.dot",
        svg="docs/rulegraph.svg",
    run:
        from diffusion_post.project import write_rulegraph

        write_rulegraph(Path(".").resolve(), output.dot, output.svg)
