"""``python -m protclip <command>``: the command-line tools that are not Ray jobs (today: ``search``)."""

import sys

if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["search"] and any(a in ("-h", "--help") for a in args[1:]):
        # from the source of SearchConfig: importing protclip.search would pull in torch for a help text
        from protclip.help import options_help

        print(options_help("protclip.search.cli", "SearchConfig"))
        sys.exit(0)
    from protclip.search.cli import main

    sys.exit(main())
