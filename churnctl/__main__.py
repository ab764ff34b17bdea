from churnctl.cli import main

main()
