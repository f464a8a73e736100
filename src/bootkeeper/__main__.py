from bootkeeper.cli.main import main

main()
