from morphzoo.cli import main

main()
